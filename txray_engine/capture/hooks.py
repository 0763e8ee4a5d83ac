"""Capture: forward hooks on named modules of any ``torch.nn.Module``.

Layers are named by their dotted module path (``model.named_modules()``), or by glob patterns such as
``model.layers.*.mlp.act_fn``. A module's output is reduced to one activation tensor laid out
batch-first ``[batch, time, neurons]``:

- a tuple or list → its first element (``nn.LSTM`` returns ``(output, (h, c))``);
- a ``PackedSequence`` → padded, batch-first;
- a Hugging Face ``ModelOutput`` → its first field, a plain ``dict`` → its first value that is
  not None;
- time-first and channels-first outputs → moved to batch-first, each layer's layout recognised
  from its module or given (see :mod:`~txray_engine.capture.layout`).

Hooks are removed when the context exits, also when the forward raised.
"""

from __future__ import annotations

import difflib
from typing import Iterable

import torch
from torch import nn

from ..errors import InputError, LayerNotFoundError
from .layout import (check_layout, legacy_time_first, names_with, recognised_layout,
                     resolve_layouts, to_batch_first)
from .names import is_pattern, matches


#: Why a TorchScript module cannot be captured, and what to do.
NO_HOOKS = ("a TorchScript module takes no forward hooks, so it cannot be captured; collect the "
            "Python model it was made from (saved with torch.save(model, path) for the command "
            "line)")


def resolve_layers(model: nn.Module, names: Iterable[str]) -> list[str]:
    """Module paths matching ``names`` (exact paths or glob patterns), in model order.

    Raises ``LayerNotFoundError`` naming close matches when a name or pattern matches nothing.
    """
    names = [names] if isinstance(names, str) else list(names)  # one name, or several
    if not names:
        raise InputError("no layers given: name at least one module path (see `txray layers`)")
    # (every name of a module that serves in several places, as one activation shared by all
    # layers: each name is found, a pattern takes one name per module, and capture says when
    # one module runs in several places)
    named = [(n, m) for n, m in model.named_modules(remove_duplicate=False) if n]
    modules = [n for n, _ in named]
    objects = dict(named)
    chosen: list[str] = []
    taken: set[int] = set()  # the modules chosen, by identity
    for name in names:
        hits = [m for m in modules if matches(m, name)] if is_pattern(name) else \
            [m for m in modules if m == name]
        if not hits:
            close = difflib.get_close_matches(name, modules, n=5, cutoff=0.5)
            hint = f"; did you mean: {', '.join(close)}" if close else \
                f"; the model's modules include: {', '.join(modules[:8])}" + \
                (", …" if len(modules) > 8 else "")
            raise LayerNotFoundError(f"no module of {type(model).__name__} matches layer "
                                     f"{name!r}{hint} (list them with `txray layers`)")
        for h in hits:  # (one name per module: a second would count its outputs twice)
            if id(objects[h]) not in taken:
                taken.add(id(objects[h]))
                chosen.append(h)
    order = {m: i for i, m in enumerate(modules)}
    return sorted(chosen, key=order.__getitem__)


def first_key(output) -> object:
    """The key of a dict output (a ``ModelOutput`` is one) that capture and masks take: its first
    value that is not None; None when there is none."""
    return next((k for k, v in output.items() if v is not None), None)


def first_part(output):
    """What capture and masks look into next: a tuple's or list's first element that is not None,
    a dict's or ``ModelOutput``'s first field; None when the output holds nothing of that
    kind."""
    if isinstance(output, dict):
        key = first_key(output)
        return None if key is None else output[key]
    if hasattr(output, "to_tuple"):
        parts = output.to_tuple()
        return parts[0] if parts else None
    if isinstance(output, (tuple, list)):
        return next((x for x in output if x is not None), None)
    return None


def innermost(output):
    """The tensor (or ``PackedSequence``) capture and masks reach through :func:`first_part`s;
    what is left when there is none."""
    while not isinstance(output, (torch.Tensor, nn.utils.rnn.PackedSequence)) and \
            first_part(output) is not None:
        output = first_part(output)
    return output


def output_tensor(output, module: nn.Module, layout: str | None = None) -> torch.Tensor:
    """The activation tensor of a module output, batch-first (see the module docstring);
    ``layout`` None: recognised from the module alone (else batch-first)."""
    x = innermost(output)
    if isinstance(x, nn.utils.rnn.PackedSequence):
        x, _ = nn.utils.rnn.pad_packed_sequence(x, batch_first=True)
        return x
    if isinstance(x, torch.Tensor) and x.is_nested:  # (torch's encoder skipping the padding)
        x = x.to_padded_tensor(0.0)
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{type(module).__name__} returned {type(output).__name__}, which "
                         f"holds no tensor to capture: pick another module, or observe what "
                         f"you need from a hook of your own (Accumulator.observe)")
    if layout is None:
        layout = recognised_layout({"": module}, "") or "batch_first"
    return to_batch_first(x, check_layout(layout, type(module).__name__))


class LayerCapture:
    """Context manager that records the outputs of the named modules of ``model``.

    After each forward, ``captured[name]`` holds the list of batch-first tensors the module produced
    (one per call) while :attr:`recording` is true. Use :meth:`take` to fetch and clear them.
    ``layouts`` maps layer names or patterns to ``batch_first``/``time_first``/``channels_first``; ``time_first`` lists layers
    too (the older spelling); layers given neither are recognised from their modules, else take
    ``default_layout``.
    """

    def __repr__(self) -> str:
        return f"LayerCapture({', '.join(self.names)})"

    def __init__(self, model: nn.Module, layers: Iterable[str],
                 time_first: Iterable[str] = (), layouts: dict | None = None,
                 default_layout: str = "batch_first"):
        self.model = model
        self.names = resolve_layers(model, layers)
        modules = dict(model.named_modules(remove_duplicate=False))
        given = {n: "time_first" for n in ([time_first] if isinstance(time_first, str)
                                           else time_first)}
        given.update(layouts or {})
        check_layout(default_layout, "default_layout")
        self.layouts = resolve_layouts(modules, self.names, given, default_layout)
        by_caller = [n for n in self.names if any(matches(n, key) for key in given)]
        self.given = set(by_caller)  # layers whose layout the caller gave
        # layers whose module says its layout (its type or a torch module's batch_first flag)
        self.recognised = {n for n in self.names
                           if n not in self.given and recognised_layout(modules, n) is not None}
        # layers taken as time-first because the caller said so: what a stage's identity
        # recorded before layouts (with "layouts" for what earlier versions took otherwise)
        self.time_first = set(names_with({n: self.layouts[n] for n in by_caller}, "time_first"))
        self.changed = {n: lay for n, lay in self.layouts.items()
                        if lay != ("time_first" if legacy_time_first(modules, n, self.time_first)
                                   else "batch_first")}
        self.captured: dict[str, list[torch.Tensor]] = {n: [] for n in self.names}
        self.versions: dict[str, list] = {n: [] for n in self.names}  # at capture, per call
        # layers whose output came padded to its own longest sequence, which may be shorter than
        # the batch (a PackedSequence, a nested tensor)
        self.padded: set[str] = set()
        self.recording = True  # (a Collector records only while it runs a step)
        self._handles: list = []

    @property
    def other_layouts(self) -> dict[str, str]:
        """The layers read other than batch-first, with their layouts."""
        return {n: lay for n, lay in self.layouts.items() if lay != "batch_first"}

    def identity(self) -> dict:
        """How outputs were laid out, for a stage's identity: layers given as time-first, and
        the layouts earlier versions would not have taken (only when there are any)."""
        return {"time_first": sorted(self.time_first),
                **({"layouts": dict(sorted(self.changed.items()))} if self.changed else {})}

    def __enter__(self) -> "LayerCapture":
        modules = dict(self.model.named_modules(remove_duplicate=False))
        script = [n for n in self.names if isinstance(modules[n], torch.jit.ScriptModule)]
        if script:
            raise InputError(f"{', '.join(repr(n) for n in script[:3])}: {NO_HOOKS}")
        try:
            for name in self.names:
                module = modules[name]
                self._handles.append(module.register_forward_hook(
                    self._hook(name, module, self.layouts[name])))
        except BaseException:
            self.remove()
            raise
        return self

    def _hook(self, name: str, module: nn.Module, layout: str):
        def hook(_mod, _inputs, output):
            if not self.recording:
                return
            x = output_tensor(output, module, layout).detach()
            if torch.compiler.is_compiling():
                # a compiled graph may run a later in-place op (a ReLU(inplace=True)) on the
                # very buffer, where eager mode would have told by the version counter
                x = x.clone()
            self.captured[name].append(x)
            self.versions[name].append(_stamp(x))
            inner = innermost(output)
            (self.padded.add if isinstance(inner, nn.utils.rnn.PackedSequence) or
             (isinstance(inner, torch.Tensor) and inner.is_nested) else self.padded.discard)(name)
        return hook

    def __exit__(self, *exc) -> None:
        self.remove()

    def _alias(self, name: str) -> str:
        """For a module that serves under several names (one activation object in every layer),
        what says so."""
        modules = list(self.model.named_modules(remove_duplicate=False))
        module = dict(modules)[name]
        others = [n for n, m in modules if m is module and n and n != name]
        if not others:
            return ""
        return (f" (it is one {type(module).__name__} object that also serves as "
                f"{', '.join(repr(n) for n in others[:3])}{', …' if len(others) > 3 else ''}: "
                f"capture a module each layer has its own of, e.g. the one before it)")

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def clear(self) -> None:
        for v in self.captured.values():
            v.clear()
        for v in self.versions.values():
            v.clear()

    def take(self) -> dict[str, torch.Tensor]:
        """One tensor per layer from the last forward; clears the record.

        Raises ``InputError`` when a module ran more than once (a shared module) or not at all.
        """
        out = {}
        try:
            for name, got in self.captured.items():
                if len(got) != 1:
                    raise InputError(
                        f"module {name!r} ran {len(got)} times in one forward pass"
                        f"{self._alias(name)}; capture needs a module that runs exactly once "
                        f"per forward (pick a per-layer module" +
                        ("; for a module applied several times, or a cell stepped in a loop, add "
                         "each call's output from a hook of your own with Accumulator.observe)"
                         if got else "; a module the forward pass does not call, or calls "
                         "through a fused path that skips it, gives nothing)"))
                if _changed(got[0], self.versions[name][0]):
                    raise InputError(
                        f"module {name!r}: its output was changed in place later in the forward "
                        f"pass (e.g. by a following nn.ReLU(inplace=True)), so what it computed is "
                        f"gone and would be counted wrongly; capture the module that changed it, "
                        f"or make that op out of place (for a ReLU: its .inplace = False)")
                out[name] = got[0]
        finally:
            self.clear()
        return out


def _stamp(x: torch.Tensor):
    """What tells later whether ``x`` was changed in place: its version counter, or, for an
    inference tensor (``torch.inference_mode``), which has none, a copy of up to 64 evenly
    spaced values and the sum of all (one read, in float32 for floating-point outputs: float64
    took 12x longer; an in-place op that changes values, e.g. a clamp of the largest 1%, changes
    the sum)."""
    try:
        return x._version
    except RuntimeError:
        x = torch.view_as_real(x) if x.is_complex() else x
        total = torch.sum(x, dtype=torch.float32 if x.is_floating_point() else torch.float64)
        return torch.cat([sampled(x, 64).to(torch.float64), total.reshape(1).to(torch.float64)])


def _changed(x: torch.Tensor, stamp) -> bool:
    if not isinstance(stamp, torch.Tensor):
        return x._version != stamp
    now = _stamp(x)
    return not bool(((now == stamp) | (now.isnan() & stamp.isnan())).all())


def sampled(x: torch.Tensor, n: int) -> torch.Tensor:
    """Up to ``n`` evenly spaced elements of ``x`` in row-major order, as a new 1-d tensor,
    without copying ``x`` (integer positions: float32 positions round past the end of tensors
    of 2**25 or more elements)."""
    total = x.numel()
    n = min(n, total)
    idx = torch.arange(n, device=x.device, dtype=torch.int64) * (total - 1) // max(1, n - 1)
    if x.is_contiguous():
        return x.reshape(-1)[idx]
    return x[torch.unravel_index(idx, x.shape)]
