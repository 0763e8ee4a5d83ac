"""Top examples: each neuron's ``m`` strongest activations over the stream, with where they
occurred (document, position) and the input tokens around them, for reports.

The order is exact and the same on every device: largest value first, and among equal values the
one offered first (an earlier batch, then a lower row of the batch; in a merge, the first state).
So a stream split into parts and merged keeps what the whole stream keeps, and a resumed run what
an uninterrupted one keeps. Values are compared as float32, the dtype they are kept in.

How a batch is offered (each way gives that result):

- **CPU** (numba, :mod:`txray_kernels.cpu_examples`): one pass over the batch, each thread owning a
  range of neurons' lists; only an activation above a neuron's current ``m``-th value can enter,
  and once the lists fill few do, so a batch costs about one read of its rows.
- **Best rows** (CUDA, unless :data:`CUDA_SCAN`): each neuron's best ``m`` rows of the batch above
  its ``m``-th value (:func:`txray_kernels.best_rows_above`: one read of the rows in Triton, ranked by
  int64 keys ``value bits << 32 | ~row`` so ties go to the lower row) merged into every list,
  without a wait for the host.
- **Torch** (``CUDA_SCAN`` on CUDA, and a CPU without numba): the candidates above each neuron's
  ``m``-th value (:func:`txray_kernels.reference.above_floor`) ordered and merged; batches with many
  candidates, such as the first, take each column's best ``m`` rows of the batch instead (a
  ``topk`` and the earliest rows equal to the ``m``-th).
"""

from __future__ import annotations

import torch

import txray_kernels as kernels

from ..errors import InputError

_CANDIDATES_PER_SLOT = 4  # the candidates path takes up to this many candidates per kept slot
_MAX_CANDIDATES = 1 << 18  # and at most this many (sorting more costs more than a batch topk)
#: Whether CUDA tensors take the torch way (the candidates above each neuron's m-th value; it
#: waits for the device to size them) instead of the best rows, which never wait. ``gpu_check``
#: Part 4 times both on full lists: on an H200, 1.06 ms per update for the best rows against
#: 2.16 ms for the torch way (N = 4,096, 6,553 rows, m = 8).
CUDA_SCAN = False


def _rows_of(acts: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    return acts if rows is None else acts.index_select(0, rows)


def check_ties(ties: str) -> str:
    """Which of equal top examples a merge keeps: ``"first"`` or ``"place"`` (see
    :meth:`TopExamples.merge_`)."""
    if ties not in ("first", "place"):
        raise InputError(f"ties must be 'first' or 'place', got {ties!r}")
    return ties


class TopExamples:
    """Running top-``m`` per neuron: ``value [N, m]`` (raw activation as float32, ``-inf`` =
    empty slot), ``doc``, ``pos`` ``[N, m]`` and ``context [N, m, W]`` (token ids, ``-1`` outside
    the text). ``-inf`` activations are never kept."""

    def __repr__(self) -> str:
        kept = int(torch.isfinite(self.value).sum())
        return (f"TopExamples({self.value.shape[0]} neurons, top {self.m}, context "
                f"{self.width}; {kept} kept; .arrays() for numpy)")

    def __init__(self, n_neurons: int, m: int, width: int, device="cpu"):
        self.m, self.width = int(m), int(width)
        with torch.inference_mode(False):  # the lists are updated in place, also outside it
            self.value = torch.full((n_neurons, m), -torch.inf, device=device)
            self.doc = torch.full((n_neurons, m), -1, dtype=torch.long, device=device)
            self.pos = torch.full((n_neurons, m), -1, dtype=torch.long, device=device)
            self.context = torch.full((n_neurons, m, width), -1, dtype=torch.long, device=device)

    # -- offering a batch -----------------------------------------------------------------------
    def update(self, acts: torch.Tensor, doc: torch.Tensor, pos: torch.Tensor,
               context: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """Offer the rows ``rows`` (``None``: all) of ``acts [P, N]`` (no NaN among them: the
        accumulator drops such rows first), with their ``doc``, ``pos`` ``[R]`` and
        ``context [R, W]``."""
        n_rows = acts.shape[0] if rows is None else rows.shape[0]
        if n_rows == 0 or self.m == 0:
            return
        lists = (self.value, self.doc, self.pos, self.context)
        if kernels.offer_examples(acts, lists, (doc, pos, context), rows):  # CPU: one numba pass
            return
        if acts.device.type == "cuda" and not CUDA_SCAN:  # no wait for the host
            self._offer_best_rows(acts, rows, doc, pos, context)
            return
        floor = self.value[:, -1]  # the m-th value; a candidate must beat it
        found = None
        if not bool(floor.isneginf().all()):  # else every neuron has candidates
            cap = min(_CANDIDATES_PER_SLOT * self.m * floor.numel(), _MAX_CANDIDATES)
            found = kernels.reference.above_floor(acts, floor, cap, rows)
        if found is None:  # many candidates, as in the first batches
            cols, (best, at) = slice(None), self._batch_best(_rows_of(acts, rows))
        elif found[0].numel() == 0:
            return
        else:
            cols, js = torch.unique(found[1], return_inverse=True)
            best, at = self._candidates(found[0], js, found[2], cols.numel())
        self._merge_rows(cols, best, at, doc, pos, context)

    def _batch_best(self, sub: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each column's first ``mm = min(m, P)`` rows of ``sub [P, c]`` by (value, lower row),
        as values and rows ``[c, mm]`` in that order (row ``-1`` for ``-inf``): a ``topk`` of
        ``mm + 1`` per column, and for the columns whose ``mm + 1``-th value ties the ``mm``-th,
        the earliest rows holding it."""
        n_rows = sub.shape[0]
        mm = min(self.m, n_rows)
        cols_rows = sub.t().to(torch.float32, memory_format=torch.contiguous_format)  # [c, P]
        top = torch.topk(cols_rows, min(mm + 1, n_rows), dim=1)
        best, at = top.values[:, :mm], top.indices[:, :mm]
        if n_rows > mm:
            tied = (top.values[:, mm] == best[:, mm - 1]).nonzero().squeeze(1)
            if tied.numel():
                t_rows, edge = cols_rows[tied], best[tied, mm - 1:]
                wanted = mm - (best[tied] > edge).sum(1, keepdim=True)
                at_edge = t_rows == edge
                take = (t_rows > edge) | (
                    at_edge & (torch.cumsum(at_edge, 1, dtype=torch.int32) <= wanted))
                at[tied] = take.nonzero()[:, 1].view(-1, mm)  # exactly mm per column, ascending
                best[tied] = torch.gather(t_rows, 1, at[tied])
        order = torch.sort(at, dim=1).indices  # rows ascending, then values descending (stable)
        at, best = torch.gather(at, 1, order), torch.gather(best, 1, order)
        order = torch.sort(best, dim=1, descending=True, stable=True).indices
        at, best = torch.gather(at, 1, order), torch.gather(best, 1, order)
        return best, at.masked_fill(best == -torch.inf, -1)

    def _candidates(self, rows, js, value, n_cols: int):
        """Each column's first ``m`` of the cells ``(rows, js, value)`` (row-major order) by
        (value, lower row), as values and rows ``[n_cols, m]`` in that order (row ``-1`` =
        none)."""
        order = torch.sort(value, descending=True, stable=True).indices  # ties: lower row first
        order = order[torch.sort(js[order], stable=True).indices]  # then by column
        rows, js, value = rows[order], js[order], value[order]
        per_col = torch.bincount(js, minlength=n_cols)
        start = torch.cumsum(per_col, 0) - per_col
        rank = torch.arange(js.numel(), device=js.device) - start[js]
        keep = rank < self.m
        rows, js, rank, value = rows[keep], js[keep], rank[keep], value[keep]
        best = torch.full((n_cols, self.m), -torch.inf, device=js.device)
        best[js, rank] = value
        at = torch.full((n_cols, self.m), -1, dtype=torch.long, device=js.device)
        at[js, rank] = rows
        return best, at

    def _offer_best_rows(self, acts, rows, doc, pos, context) -> None:
        """Each neuron's best ``m`` offered rows above its ``m``-th value
        (:func:`txray_kernels.best_rows_above`), merged into every list: no wait for the host."""
        best, at = kernels.best_rows_above(acts, self.value[:, -1], self.m, rows)
        self._merge_rows(slice(None), best, at, doc, pos, context)

    def _merge_rows(self, cols, best, at, doc, pos, context) -> None:
        """Merge candidates ``best [c, x]`` at batch rows ``at`` (``-1`` = none, sorted by value
        then row) into the lists of neurons ``cols``; the kept examples win ties."""
        empty = at < 0
        safe = at.clamp(min=0)
        cand_doc = doc[safe].masked_fill(empty, -1)
        cand_pos = pos[safe].masked_fill(empty, -1)
        cand_ctx = context[safe].masked_fill(empty.unsqueeze(-1), -1)
        self._keep_best(cols, torch.cat([self.value[cols], best], 1),
                        torch.cat([self.doc[cols], cand_doc], 1),
                        torch.cat([self.pos[cols], cand_pos], 1),
                        torch.cat([self.context[cols], cand_ctx], 1))

    def _keep_best(self, cols, value, doc, pos, context) -> None:
        """The first ``m`` of each row by value, earlier columns first among equal values, into
        the lists of neurons ``cols``."""
        order = torch.sort(value, dim=1, descending=True, stable=True).indices[:, : self.m]
        self.value[cols] = torch.gather(value, 1, order)
        self.doc[cols] = torch.gather(doc, 1, order)
        self.pos[cols] = torch.gather(pos, 1, order)
        self.context[cols] = torch.gather(context, 1,
                                          order.unsqueeze(-1).expand(-1, -1, self.width))

    def merge_(self, other: "TopExamples", ties: str = "first") -> "TopExamples":
        """Add ``other``'s examples; among equal values this state's stay first, or with
        ``ties="place"`` the lower (doc, pos): what one stream in that order keeps, for parts
        whose docs are ids in one corpus (shards)."""
        if (other.m, other.width) != (self.m, self.width):
            raise InputError("cannot merge top examples of different sizes")
        check_ties(ties)
        value, doc, pos, context = (torch.cat([getattr(self, k), getattr(other, k)], 1)
                                    for k in ("value", "doc", "pos", "context"))
        if ties == "place":  # (doc, pos) ascending, so that the stable sort by value keeps it
            order = torch.sort(pos, dim=1, stable=True).indices
            order = torch.gather(order, 1, torch.sort(torch.gather(doc, 1, order), dim=1,
                                                      stable=True).indices)
            value, doc, pos = (torch.gather(t, 1, order) for t in (value, doc, pos))
            context = torch.gather(context, 1, order.unsqueeze(-1).expand(-1, -1, self.width))
        self._keep_best(slice(None), value, doc, pos, context)
        return self

    # -- storage --------------------------------------------------------------------------------
    def arrays(self) -> dict:
        return {key: t.cpu().numpy().copy() for key, t in  # a snapshot, not a view
                (("examples_value", self.value), ("examples_doc", self.doc),
                 ("examples_pos", self.pos), ("examples_context", self.context))}

    @classmethod
    def from_arrays(cls, arrays: dict, device="cpu") -> "TopExamples":
        """A state holding copies of ``arrays`` (as :meth:`arrays` gives them): updates never
        write into the caller's arrays."""
        value, context = arrays["examples_value"], arrays["examples_context"]
        shapes = [tuple(arrays[f"examples_{k}"].shape) for k in ("value", "doc", "pos")]
        if len(shapes[0]) != 2 or len(set(shapes)) != 1 or context.ndim != 3 or \
                tuple(context.shape[:2]) != shapes[0]:
            raise InputError(f"top examples must be value, doc, pos [N, m] and context "
                             f"[N, m, W], got shapes {shapes + [tuple(context.shape)]}")
        ex = cls(value.shape[0], value.shape[1], context.shape[2], device)
        with torch.inference_mode(False):
            for name in ("value", "doc", "pos", "context"):
                setattr(ex, name, torch.tensor(arrays[f"examples_{name}"], device=device))
        return ex


def context_windows(input_ids: torch.Tensor, mask: torch.Tensor | None, radius: int) -> torch.Tensor:
    """``[B, T, 2r+1]`` token ids around every position of ``input_ids [B, T]`` (``-1`` beyond the
    sequence or on padding)."""
    ids = input_ids.long()
    if mask is not None:
        ids = ids.masked_fill(~mask.bool(), -1)
    padded = torch.nn.functional.pad(ids, (radius, radius), value=-1)
    return padded.unfold(1, 2 * radius + 1, 1)
