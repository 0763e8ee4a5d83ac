"""The dense targets of a fused launch (:mod:`txray_kernels.triton_dense`): their validation, the kernel
arguments of up to :data:`MAX_STREAMS` streams, the int32 / fp32 partials of ``mode="partial"``
(:func:`flush`), and :func:`totals_target`, which lets a layer's per-neuron totals ride in the
streams' scatter launch.
"""

from __future__ import annotations

import weakref

import torch

#: Streams served by one launch; more streams are handled in groups (later groups scatter the
#: ``[P, k]`` selection of the first launch, they do not read the activations again).
MAX_STREAMS = 4


class _Partial:
    __slots__ = ("count", "mass", "rows", "__weakref__")

    def __init__(self, cells: int, device):
        self.count = torch.zeros(cells, dtype=torch.int32, device=device)
        self.mass = torch.zeros(cells, dtype=torch.float32, device=device)
        self.rows = 0


_PARTIALS: "weakref.WeakKeyDictionary[object, _Partial]" = weakref.WeakKeyDictionary()


def flush(state=None) -> None:
    """Add the int32/fp32 partials of ``state`` (``None``: of every state) into its exact master
    and zero them. A no-op for states without partials (``mode="direct"`` never creates any)."""
    states = list(_PARTIALS.keys()) if state is None else [state]
    for s in states:
        p = _PARTIALS.get(s)
        if p is None or p.rows == 0:
            continue
        s.count.add_(p.count)
        s.mass.add_(p.mass)
        p.count.zero_()
        p.mass.zero_()
        p.rows = 0


def _check_device(t: torch.Tensor, what: str, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(f"{what} is on {t.device}, the activations on {device}: put them on one device")


def _dense_targets(targets, p: int, n: int, device) -> list:
    out = []
    for i, target in enumerate(targets):
        what = f"target {i}"
        try:
            features, state = target
        except (TypeError, ValueError):
            raise ValueError(f"{what}: targets are (features, state) pairs") from None
        if not isinstance(features, torch.Tensor) or features.dim() != 1 or features.shape[0] != p:
            got = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(f"{what}: features must be a 1-D tensor of {p} ids, got {got}")
        if features.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{what}: features must be int64 (or int32), got {features.dtype}")
        _check_device(features, f"{what}: features", device)
        for name, dtype in (("count", torch.int64), ("mass", torch.float64), ("peak", torch.float32)):
            t = getattr(state, name, None)
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"{what}: the state ({type(state).__name__}) is not a dense state "
                                 f"(no {name} tensor); use txray_kernels.triton_sparse for sparse states")
            if t.dtype != dtype or t.dim() != 1 or not t.is_contiguous():
                raise ValueError(f"{what}: state.{name} must be a contiguous 1-D {dtype} tensor, "
                                 f"got {t.dtype} {tuple(t.shape)}")
            _check_device(t, f"{what}: state.{name}", device)
        if getattr(state, "n_neurons", n) != n:
            raise ValueError(f"{what}: the state has {state.n_neurons} neurons, the activations {n}")
        v = int(state.n_features)
        if not state.count.numel() == state.mass.numel() == state.peak.numel() == n * v:
            raise ValueError(f"{what}: the state's tensors must hold n_neurons * n_features = "
                             f"{n * v} cells")
        out.append((features.contiguous(), state, v))
    return out


_DUMMIES: dict = {}


def _dummies(device) -> tuple:
    """Placeholder tensors for the unused stream slots of a launch (never read or written), made
    once per device: three allocations and fills per launch showed in the host time of a call."""
    got = _DUMMIES.get(device)
    if got is None:
        got = _DUMMIES[device] = tuple(torch.zeros(1, dtype=d, device=device)
                                       for d in (torch.int64, torch.float64, torch.float32))
    return got


def _stream_args(group, mode: str, device) -> list:
    args = []
    for features, state, v in group:
        if mode == "partial":
            part = _PARTIALS.get(state)
            if part is None:
                part = _PARTIALS[state] = _Partial(state.count.numel(), device)
            args += [features, part.count, part.mass, state.peak, v]
        else:
            args += [features, state.count, state.mass, state.peak, v]
    dummy_i, dummy_d, dummy_f = _dummies(device)
    for _ in range(MAX_STREAMS - len(group)):
        args += [dummy_i, dummy_i, dummy_d, dummy_f, 1]
    return args


class _Totals:
    """A layer's per-neuron totals as a dense target of one feature (id 0 at every row): ``count``
    and ``mass`` are the totals, ``peak`` a scratch per (device, width) that nobody reads."""

    __slots__ = ("count", "mass", "peak", "n_neurons", "n_features", "__weakref__")

    def __init__(self, count, mass, peak):
        self.count, self.mass, self.peak = count, mass, peak
        self.n_neurons, self.n_features = count.numel(), 1


_ZEROS: dict = {}  # device -> int64 zeros (the totals' feature ids), grown when a call needs more
_ZERO_VIEWS: dict = {}  # device -> (those zeros, the view of the last call's p of them)
_PEAKS: dict = {}  # (device, width) -> the totals' scratch peak


def totals_target(count: torch.Tensor, mass: torch.Tensor, p: int) -> tuple:
    """``(features [p], state)``: the per-neuron totals ``count[n] += 1``, ``mass[n] += max(a, 0)``
    (int64 / float64 ``[N]``, as :func:`txray_kernels.reference.add_totals` adds them) as one more dense
    target of a selection of ``p`` rows, so that the scatter launch that feeds the streams adds
    them too, where they took five torch operators of their own. (In ``mode="partial"`` keep the
    returned target until :func:`flush` has taken its partials.)"""
    device = count.device
    zeros = _ZEROS.get(device)
    if zeros is None or zeros.numel() < p:
        zeros = _ZEROS[device] = torch.zeros(max(p, 2 * (0 if zeros is None else zeros.numel())),
                                             dtype=torch.int64, device=device)
    last = _ZERO_VIEWS.get(device)  # the layers of a batch share their p: one view for all
    if last is None or last[0] is not zeros or last[1].numel() != p:
        last = _ZERO_VIEWS[device] = (zeros, zeros[:p])
    peak = _PEAKS.get((device, count.numel()))
    if peak is None:
        peak = _PEAKS[device, count.numel()] = torch.empty(count.numel(), dtype=torch.float32,
                                                           device=device)
    return last[1], _Totals(count, mass, peak)
