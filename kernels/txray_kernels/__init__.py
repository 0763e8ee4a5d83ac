"""Hot-path kernels: top-k selection and the scatter into accumulators.

The pure-PyTorch reference in :mod:`txray_kernels.reference` defines the semantics (and the tie-break:
the lower neuron index wins among equal activations). :func:`select` (and :func:`select_rows`,
its form for chosen rows that does not wait for a GPU), :func:`scatter`, :func:`add_totals`,
:func:`accumulate` (positions + events + per-neuron totals, what the engine calls),
:func:`offer_examples` and :func:`best_rows_above` (the running top examples) dispatch on the
device: CPU tensors take the numba fast paths of :mod:`txray_kernels.cpu` (the selection),
:mod:`txray_kernels.cpu_scatter` (one call for dense states), :mod:`txray_kernels.cpu_table` (the hash table
of sparse states) and :mod:`txray_kernels.cpu_examples`, CUDA tensors the Triton kernels of :mod:`txray_kernels.triton_dense`,
:mod:`txray_kernels.triton_sparse` and :mod:`txray_kernels.triton_examples` (imported only then), so callers
never change. All give the reference's results.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch

from . import cpu_cache

cpu_cache.drop_stale()  # before the numba kernels below load anything from their cache

from . import cpu, cpu_scatter, reference, targets  # noqa: E402
from .reference import nonfinite_rows, scatter_events, select_accumulate, select_topk  # noqa: E402
from .targets import check_targets, is_dense_state  # noqa: E402

__all__ = ["Selection", "accumulate", "add_totals", "best_rows_above", "check_targets", "id_bounds",
           "nonfinite_rows", "offer_examples", "on_device", "on_own_device", "positions_in_kernels",
           "scatter", "scatter_events", "select", "select_accumulate", "select_rows",
           "select_topk"]


def on_device(device):
    """A context making ``device`` CUDA's current device (Triton launches there, on its stream),
    restored after; nothing for other devices. Sums on ``cuda:1`` with another GPU current would
    otherwise be launched on the wrong one."""
    device = torch.device(device)
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def on_own_device(method):
    """Decorate a method of an object with a ``device`` to run it under :func:`on_device`."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        if self.device.type != "cuda":  # the CPU's hot path: no context to enter
            return method(self, *args, **kwargs)
        with torch.cuda.device(self.device):
            return method(self, *args, **kwargs)
    return run


def _triton_ok(t: torch.Tensor) -> bool:
    if not t.is_cuda:
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Selection:
    """The top-``k`` of some rows of an activation block, made without waiting for the device.

    ``values [R, k]`` float32 and ``indices [R, k]`` int64 (one row per selected row). Rows holding
    NaN/inf (once read as float32) have unspecified selections. ``suspects`` counts rows that may be
    such (a superset; ``0``: every row is finite): an int where it came for free (the CPU path
    finds them in its selection pass), else a 0-d tensor on the device, for the caller to read
    back together with its other numbers, one wait for all. :meth:`nonfinite` gives the rows.
    """

    values: torch.Tensor
    indices: torch.Tensor
    suspects: int | torch.Tensor
    acts: torch.Tensor  # the selected rows' source, for :meth:`nonfinite`
    rows: torch.Tensor | None
    bad: torch.Tensor | None = None  # the non-finite positions, once known

    def nonfinite(self) -> torch.Tensor:
        """Positions (in ``values``' rows) of the rows holding NaN/inf; on a GPU this waits
        unless ``suspects`` is known to be 0."""
        if self.bad is None:
            if isinstance(self.suspects, int) and self.suspects == 0:
                self.bad = torch.zeros(0, dtype=torch.long, device=self.values.device)
            else:
                acts = self.acts if self.rows is None else self.acts.index_select(0, self.rows)
                self.bad = nonfinite_rows(acts)
        return self.bad


def _select_every_row(acts: torch.Tensor) -> bool:
    """Whether :func:`select_rows` selects every row and keeps the asked ones (the GPU: its
    selection reads rows faster than a copy of the kept rows moves them), or copies the kept rows
    first (the torch path on the CPU, where selecting a row costs more than copying it)."""
    return acts.is_cuda


def select_rows(acts: torch.Tensor, k: int, rows: torch.Tensor | None = None) -> Selection:
    """Top-``k`` of the rows ``rows`` (int64 indices on ``acts``' device; ``None``: all) of
    ``acts`` ``[P, N]``, without waiting for the device (see :class:`Selection`). The CPU checks
    that the indices are in range; on a GPU they must be (the engine's come from ``nonzero``).

    The numba path (CPU) and the Triton kernel (CUDA) read the kept rows in place; elsewhere a
    GPU selects every row (padding is cheaper to read than the kept rows are to copy) and keeps
    the asked rows of the result, and a CPU copies the kept rows first.
    """
    if acts.dim() != 2:
        raise ValueError(f"activations must be [positions, neurons], got shape {tuple(acts.shape)}")
    n = acts.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    if rows is not None and (rows.dim() != 1 or rows.dtype not in (torch.int64, torch.int32)
                             or rows.device != acts.device):
        raise ValueError(f"rows must be a 1-D int64 tensor of row indices on {acts.device}, got "
                         f"{rows.dtype} of shape {tuple(rows.shape)} on {rows.device}")
    if k < n and k <= cpu.MAX_K and cpu.usable(acts):
        values, indices, bad = cpu.select_topk(acts, k, rows)
        return Selection(values, indices, int(bad.numel()), acts, rows, bad)
    if acts.dtype == torch.float64:  # values are float32: a row that overflows it is non-finite
        acts = acts.float()
    if k < n and _triton_ok(acts):  # the kept rows read in place, NaN/inf flagged on the way
        from . import triton_dense
        p = acts.shape[0] if rows is None else rows.shape[0]
        flags = torch.empty(p, dtype=torch.int8, device=acts.device)
        values, indices = triton_dense.select_topk(acts, k, flags=flags,
                                                   rows=None if rows is None else rows.long())
        return Selection(values, indices, flags.sum(), acts, rows)
    if rows is not None and not _select_every_row(acts):  # copy the kept rows, select those
        acts, rows = acts.index_select(0, rows), None
    flags = reference.suspect_rows(acts)
    values, indices = select_topk(acts, k)
    if rows is not None:
        values, indices, flags = (t.index_select(0, rows) for t in (values, indices, flags))
    return Selection(values, indices, flags.sum(), acts, rows)


def select(acts: torch.Tensor, k: int, rows: torch.Tensor | None = None
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` of the rows ``rows`` (``None``: all) of ``acts`` ``[P, N]`` and the positions of
    the rows holding NaN/inf once read as float32, the engine's value type (a float64 value beyond
    its range counts as inf): :func:`select_rows`, then :meth:`Selection.nonfinite`.

    Returns ``(values [R, k] float32, indices [R, k] int64, nonfinite positions)``; the
    selection of a non-finite row is unspecified (callers drop or reject those rows).
    """
    sel = select_rows(acts, k, rows)
    return sel.values, sel.indices, sel.nonfinite()


def offer_examples(acts: torch.Tensor, lists, batch, rows: torch.Tensor | None = None) -> bool:
    """Offer rows of ``acts`` to the running top examples ``lists``, in place, where a kernel
    takes them: on the CPU one numba pass (:mod:`txray_kernels.cpu_examples`; the semantics of
    :func:`txray_kernels.reference.offer_examples`). Returns whether it did; otherwise nothing changed
    and the caller takes its torch way."""
    if not cpu.AVAILABLE or acts.device.type != "cpu":
        return False
    from . import cpu_examples
    if not cpu_examples.usable(acts, lists):
        return False
    cpu_examples.offer(acts, lists, batch, rows)
    return True


def best_rows_above(acts: torch.Tensor, floor: torch.Tensor, m: int,
                    rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each column's first ``m`` offered rows above ``floor``, by value and then row (the batch
    step of the top examples on a GPU; :func:`txray_kernels.reference.best_rows_above` defines it): on
    CUDA one read of the rows in Triton (:mod:`txray_kernels.triton_examples`, ``m`` up to its
    ``MAX_M``), otherwise the torch reference."""
    if _triton_ok(acts) and acts.dim() == 2 and acts.is_floating_point():
        from . import triton_examples
        if 1 <= m <= triton_examples.MAX_M:
            if acts.dtype not in (torch.float32, torch.float16, torch.bfloat16):
                acts = acts.float()  # float64: compared as float32, as the selection does
            return triton_examples.best_rows_above(acts, floor.float(), m,
                                                   None if rows is None else rows.long())
    return reference.best_rows_above(acts, floor, m, rows)


def id_bounds(tensors) -> list[tuple[int, int]]:
    """``(min, max)`` of each non-empty integer tensor: on the CPU one numba pass each, on a GPU
    one read-back for all (:func:`txray_kernels.targets.id_bounds`)."""
    if cpu.AVAILABLE and all(t.device.type == "cpu" for t in tensors):
        return cpu_scatter.id_bounds(tensors)
    return targets.id_bounds(tensors)


def _cpu_dense(targets, values) -> tuple[list, list]:
    """``(dense CPU targets the numba path takes, the rest)``."""
    if not (cpu.AVAILABLE and values.device.type == "cpu"):
        return [], list(targets)
    fast, rest = [], []
    for target in targets:
        state = target[1]
        ok = is_dense_state(state) and state.count.device.type == "cpu"
        (fast if ok else rest).append(target)
    return fast, rest


def scatter(values: torch.Tensor, indices: torch.Tensor, targets) -> None:
    """Add a selection into every target ``(features [P], state)`` (see
    :func:`txray_kernels.reference.scatter_events`)."""
    if _triton_ok(values):
        from . import triton_sparse
        triton_sparse.scatter_events(values, indices, targets)
        return
    fast, rest = _cpu_dense(targets, values)
    if fast:
        cpu_scatter.accumulate_dense(values, indices, fast, positions=False)
    scatter_events(values, indices, rest)


def add_totals(values: torch.Tensor, indices: torch.Tensor, count: torch.Tensor,
               mass: torch.Tensor) -> None:
    """Per-neuron totals of a selection, in place (see :func:`txray_kernels.reference.add_totals`)."""
    if cpu.AVAILABLE and count.device.type == "cpu" and values.device.type == "cpu":
        cpu_scatter.accumulate_dense(values, indices, [], positions=False, totals=(count, mass))
    else:
        reference.add_totals(values, indices, count, mass)


def _add_positions(targets, counts) -> None:
    for i, (features, state) in enumerate(targets):
        known = None if counts is None else counts[i]
        if known is None:
            state.add_positions(features)
        else:
            state.add_positions(features, known)


def _totals_in_launch(values: torch.Tensor, count: torch.Tensor, mass: torch.Tensor) -> bool:
    """Whether the totals can be one more dense target of the scatter launch: flat int64 / float64
    tensors of one size on the selection's device (else :func:`add_totals` takes them)."""
    return count.device == values.device == mass.device and count.dtype == torch.int64 and \
        mass.dtype == torch.float64 and count.dim() == mass.dim() == 1 and \
        count.numel() == mass.numel() and count.is_contiguous() and mass.is_contiguous()


def positions_in_kernels(device: torch.device) -> bool:
    """Whether :func:`accumulate` counts positions inside its own kernels on ``device`` (the CPU's
    numba path), so that position counts made ahead for it would go unused."""
    return cpu.AVAILABLE and torch.device(device).type == "cpu"


def accumulate(values: torch.Tensor, indices: torch.Tensor, targets, totals, *,
               checked: bool = False, counts=None) -> None:
    """Everything a selection adds: each target's positions (``state.add_positions``) and events
    (:func:`scatter`), and the per-neuron ``totals=(count, mass)`` (:func:`add_totals`). On the
    CPU, dense targets and the totals take one numba call, and a state with an
    ``add_selection(values, indices, features)`` method (a sparse state's hash table) one pass.

    Shapes and ids are checked before anything changes (bad ones raise ``ValueError``; on a GPU
    that is one read-back); ``checked=True`` skips that, for a caller that checked them (the
    ``Accumulator`` checks ids in ``prepare``, and its selections hold valid neurons). ``counts``:
    ``None``, or per target the position counts of its ids (or ``None``) made ahead, for
    ``state.add_positions`` (the layers of one batch share them)."""
    if indices.shape[0] == 0:
        _add_positions(targets, counts)
        return
    if not (positions_in_kernels(values.device) and totals[0].device.type == "cpu"):
        if not checked:
            check_targets(values, indices, targets, totals[0].numel())
        _add_positions(targets, counts)
        if _triton_ok(values) and _totals_in_launch(values, *totals):  # the totals ride along
            from . import triton_dense  # in the streams' scatter launch
            scatter(values, indices, [*targets, triton_dense.totals_target(*totals,
                                                                          values.shape[0])])
        else:
            scatter(values, indices, targets)
            add_totals(values, indices, *totals)
        return
    fast, rest = _cpu_dense(targets, values)
    if not checked and (rest or not fast):  # check everything once, before any call changes it
        cpu_scatter.check_selection(values, indices, targets, totals[0].numel())
        checked = True
    if fast:
        cpu_scatter.accumulate_dense(values, indices, fast, positions=True, totals=totals, checked=checked)
    else:
        cpu_scatter.add_totals(values, indices, *totals)
    for features, state in rest:
        if hasattr(state, "add_selection"):
            state.add_selection(values, indices, features, checked=True)
        else:
            state.add_positions(features)
            scatter_events(values, indices, [(features, state)])
