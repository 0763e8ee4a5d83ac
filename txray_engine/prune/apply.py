"""Apply a selection to a torch model: a removable mask on any captured layer, or structural
removal of MLP intermediate neurons that shrinks the weights.

Masking zeroes the selected units of a module's output (its last dimension; axis 1 of a channels-first
layer such as ``nn.Conv1d``) with a forward hook;
for a recurrent layer (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``) this masks what later layers see,
its outputs and the same units of its top layer's final hidden state ``h_n``, not the
recurrence itself or an LSTM's cell state.
Structural removal deletes the units from ``Linear → activation → Linear`` blocks (also gated MLPs
such as Llama's ``gate_proj``/``up_proj``/``down_proj``, GPT-2's ``Conv1D`` ``c_fc``/``c_proj``
and BERT's ``intermediate``/``output``): the pruned model computes what the masked model computes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Iterable

import numpy as np
import torch
from torch import nn

from ..capture.hooks import first_key, innermost, resolve_layers
from ..capture.layout import resolve_layouts, unit_axis
from ..capture.names import matches
from ..errors import InputError


def _zero_units(output, units: torch.Tensor, channels_first: bool = False):
    """``output`` with ``units`` zeroed (on its last axis, or on axis 1 of a channels-first
    output of 3 or more axes), in new tensors."""
    if isinstance(output, nn.utils.rnn.PackedSequence):
        return output._replace(data=output.data.index_fill(-1, units, 0))
    if isinstance(output, torch.Tensor):
        return output.index_fill(_unit_axis(output, channels_first), units, 0)
    if isinstance(output, dict) and first_key(output) is not None:  # also a ModelOutput
        key = first_key(output)
        # the module's own, fresh container
        output[key] = _zero_units(output[key], units, channels_first)
        return output
    if isinstance(output, (tuple, list)) and any(x is not None for x in output):
        i = next(i for i, x in enumerate(output) if x is not None)  # (the part capture reads)
        zeroed = [*output[:i], _zero_units(output[i], units, channels_first), *output[i + 1:]]
        if isinstance(output, list):
            return zeroed
        return type(output)(*zeroed) if hasattr(output, "_fields") else tuple(zeroed)  # namedtuples
    raise InputError(f"cannot mask a module output of type {type(output).__name__}")


def _unit_axis(x: torch.Tensor, channels_first: bool) -> int:
    return unit_axis("channels_first" if channels_first else "batch_first", x.dim())


def _first_tensor(output):
    """What a mask zeroes: the tensor capture takes (of a PackedSequence: its data)."""
    output = innermost(output)
    return output.data if isinstance(output, nn.utils.rnn.PackedSequence) else output


def unit_ids(units: Iterable[int], what: str) -> np.ndarray:
    """``units`` as int64 ids ≥ 0; anything else (0.5, "1", True, -1) is an error naming ``what``,
    not an id cut down to another unit."""
    try:
        ids = np.asarray(units.tolist() if hasattr(units, "tolist") else list(units))
    except (TypeError, ValueError) as exc:  # (not a sequence; lists of unequal lengths)
        raise InputError(f"{what}: units must be a flat list of integer ids, got "
                         f"{type(units).__name__}" +
                         (" of lists" if isinstance(exc, ValueError) else "")) from exc
    if ids.ndim > 1:
        raise InputError(f"{what}: units must be a flat list of integer ids, got a nested one "
                         f"of shape {ids.shape}")
    ids = ids.reshape(-1)
    top = np.iinfo(np.int64).max
    if not ids.size:
        return ids.astype(np.int64)
    if ids.dtype.kind == "O" and all(type(i) is int for i in ids):  # (past int64)
        raise InputError(f"{what}: unit id {max(ids)} is past any layer's width")
    if ids.dtype.kind == "f":  # 3.0 from a float column is unit 3; 0.5 is no unit
        fractional = ~np.isfinite(ids) | (ids != np.round(ids))
        bad = ids[fractional][0] if fractional.any() else None
        if bad is None and float(np.abs(ids).max()) > top:
            raise InputError(f"{what}: unit id {float(np.abs(ids).max()):g} is past any layer's "
                             f"width")
    elif ids.dtype.kind == "u" and int(ids.max()) > top:
        raise InputError(f"{what}: unit id {int(ids.max())} is past any layer's width")
    else:
        bad = None if ids.dtype.kind in "iu" else ids[0]
    if bad is not None:
        raise InputError(f"{what}: unit ids are integers, got "
                         f"{bad.item() if hasattr(bad, 'item') else bad!r} ({ids.dtype}); give "
                         f"the neuron ids as int")
    ids = ids.astype(np.int64)
    if int(ids.min()) < 0:
        raise InputError(f"{what}: unit ids are 0 or more, got {int(ids.min())}")
    return ids


def _mask_hook(layer: str, units: torch.Tensor, channels_first: bool, size: int | None = None):
    """A forward hook zeroing ``units`` of the output; ids past its width, or a width other than
    the ``size`` the mask was made for, are a clear error (the largest id is taken once here,
    not read back from the device at every forward pass)."""
    top = int(units.max()) if units.numel() else -1

    def hook(module, inputs, output):
        first = _first_tensor(output)
        if not isinstance(first, torch.Tensor):
            return _zero_units(output, units)  # raises its message for this output type
        packed = isinstance(innermost(output), nn.utils.rnn.PackedSequence)
        width = first.shape[_unit_axis(first, channels_first and not packed)] if first.dim() \
            else 0
        if first.dim() and top >= width:
            raise InputError(f"mask of layer {layer!r}: unit {top} is outside its "
                             f"{width} units (0 to {width - 1}); was the mask "
                             f"made for this model?")
        if first.dim() and size is not None and width != size:
            raise InputError(f"mask of layer {layer!r} was made for {size} units, and this "
                             f"layer has {width} (on the axis masked: give the mask's "
                             f"layouts too); was the mask made for this model?")
        zeroed = _zero_units(output, units.to(first.device), channels_first and not packed)
        if isinstance(module, nn.RNNBase) and isinstance(zeroed, tuple) and len(zeroed) == 2:
            zeroed = (zeroed[0], _zero_final_state(module, zeroed[1], units))
        return zeroed
    return hook


def _zero_final_state(rnn: nn.RNNBase, hidden, units: torch.Tensor):
    """A recurrent module's final hidden state (``h_n``, an LSTM's ``(h_n, c_n)``) with the
    masked output units zeroed in its top layer: output unit ``u`` is unit ``u % H`` of direction
    ``u // H`` (a classifier reading ``h_n[-1]`` reads what the output's masked units were). The
    cell state ``c_n`` and the recurrence itself are left."""
    h = hidden[0] if isinstance(hidden, tuple) else hidden
    if not isinstance(h, torch.Tensor) or h.dim() < 2:
        return hidden
    width, directions = h.shape[-1], 2 if rnn.bidirectional else 1
    units = units.to(h.device)
    h = h.clone()
    for d in range(directions):
        mine = units[(units // width) == d] % width
        if mine.numel():
            row = h.shape[0] - directions + d  # the top layer's state of direction d
            h[row] = h[row].index_fill(-1, mine, 0)
    return (h, *hidden[1:]) if isinstance(hidden, tuple) else h


class UnitMask:
    """Forward hooks that zero selected units; a context manager, or call :meth:`remove`.
    ``layouts`` as for capture: a channels-first layer's units are its axis 1. ``selection``
    may be a whole mask file (``txray prune``'s JSON, read): its ``layers``, with its
    ``layouts`` and its ``layer_sizes`` checked against each layer's width."""

    def __init__(self, model: nn.Module, selection: dict[str, Iterable[int]],
                 layouts: dict | None = None):
        modules = dict(model.named_modules(remove_duplicate=False))
        self._handles = []
        sizes = {}
        if isinstance(selection, Mapping) and "layers" in selection and (
                isinstance(selection["layers"], Mapping) or
                {"layer_sizes", "selector", "store"} & set(selection)):  # a mask file
            if not isinstance(selection["layers"], Mapping):
                raise InputError(f"the mask file's layers must be a dict {{layer name: unit "
                                 f"ids}}, got {type(selection['layers']).__name__}")
            sizes = selection.get("layer_sizes") or {}
            if not isinstance(sizes, Mapping) or not all(
                    type(v) is int and v >= 0 for v in sizes.values()):
                raise InputError(f"the mask file's layer_sizes must map layers to their widths "
                                 f"(integers), got {sizes!r:.80}")
            layouts = selection.get("layouts") if layouts is None else layouts
            selection = selection["layers"]
        if not isinstance(selection, Mapping) or not all(isinstance(k, str) for k in selection):
            raise InputError(f"a selection is a dict {{layer name: unit ids}} (a mask file's "
                             f"'layers'), got {type(selection).__name__}" +
                             ("" if not isinstance(selection, Mapping) else
                              " with keys that are not names"))
        try:
            for layer, units in selection.items():
                idx = torch.as_tensor(unit_ids(units, f"mask of layer {layer!r}"))
                # an exact path, or a pattern: the same units of every module it matches
                names = [layer] if layer in modules else resolve_layers(model, [layer])
                # the layouts of these layers (those of a collection's other layers are left)
                chosen = resolve_layouts(modules, names, {
                    k: v for k, v in (layouts or {}).items()
                    if any(matches(n, k) for n in names)})
                for name in names:  # first among the module's hooks: a Collector's, or any
                    # other, sees the masked output whether it came before the mask or after
                    self._handles.append(modules[name].register_forward_hook(
                        _mask_hook(name, idx, chosen[name] == "channels_first",
                                   sizes.get(layer)), prepend=True))
        except BaseException:
            self.remove()
            raise

    def __repr__(self) -> str:
        return f"UnitMask({len(self._handles)} hook(s){'' if self._handles else ', removed'})"

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> "UnitMask":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def mask_units(model: nn.Module, selection: dict[str, Iterable[int]],
               layouts: dict | None = None) -> UnitMask:
    """Zero ``selection[layer]`` units of each layer's output until the mask is removed; a glob
    pattern as ``layer`` masks those units in every module it matches. ``selection`` may be a
    mask file as read (``json.load``): its layouts and layer sizes come with it. Units are the
    last axis, or axis 1 of channels-first layers (``nn.Conv1d`` and the like are recognised; ``layouts``
    as for :class:`~txray_engine.collect.Collector`: give the stage's, ``stage.layouts``, for a
    layer collected as channels-first whose module does not say so, e.g. an activation after a
    convolution, else its time steps are masked). The mask runs first among each module's
    forward hooks: a :class:`~txray_engine.collect.Collector` collects the masked model whether
    it was entered before the mask or after."""
    return UnitMask(model, selection, layouts)


# -- structural removal ---------------------------------------------------------------------------
def _shrink_out(layer: nn.Module, keep: torch.Tensor) -> None:
    """Keep output units ``keep`` of a Linear (weight [out, in]) or a GPT-2 Conv1D ([in, out])."""
    w = layer.weight.data
    if isinstance(layer, nn.Linear):
        layer.weight = nn.Parameter(w[keep].clone())
        layer.out_features = int(keep.numel())
    elif type(layer).__name__ == "Conv1D":
        layer.weight = nn.Parameter(w[:, keep].clone())
        layer.nf = int(keep.numel())
    else:
        raise InputError(f"cannot shrink a {type(layer).__name__}: only Linear and Conv1D")
    if getattr(layer, "bias", None) is not None:
        layer.bias = nn.Parameter(layer.bias.data[keep].clone())


def _shrink_in(layer: nn.Module, keep: torch.Tensor) -> None:
    """Keep input units ``keep`` of a Linear or Conv1D."""
    w = layer.weight.data
    if isinstance(layer, nn.Linear):
        layer.weight = nn.Parameter(w[:, keep].clone())
        layer.in_features = int(keep.numel())
    elif type(layer).__name__ == "Conv1D":
        layer.weight = nn.Parameter(w[keep].clone())
    else:
        raise InputError(f"cannot shrink a {type(layer).__name__}: only Linear and Conv1D")


def _find_mlp(model: nn.Module, layer: str):
    """``(MLP module's name, input projections, output projection)`` for ``layer``, or None."""
    modules = dict(model.named_modules(remove_duplicate=False))
    path = layer.split(".")
    for depth in (len(path), len(path) - 1, len(path) - 2):
        if depth < 0:
            continue
        name = ".".join(path[:depth])
        m = modules.get(name, model if not name else None)
        if m is None:
            continue
        c = dict(m.named_children())
        if {"gate_proj", "up_proj", "down_proj"} <= set(c):
            return name, [c["gate_proj"], c["up_proj"]], c["down_proj"]
        if {"c_fc", "c_proj"} <= set(c):
            return name, [c["c_fc"]], c["c_proj"]
        if {"fc1", "fc2"} <= set(c):
            return name, [c["fc1"]], c["fc2"]
        if {"intermediate", "output"} <= set(c) and hasattr(c["intermediate"], "dense"):
            return name, [c["intermediate"].dense], c["output"].dense
        if isinstance(m, nn.Sequential) and depth == len(path):  # the MLP itself
            pair = _sequential_mlp(m, 0)
            if pair:
                return name, [m[pair[0]]], m[pair[1]]
        if isinstance(m, nn.Sequential) and depth == len(path) - 1 and path[-1].isdigit():
            i = int(path[-1])
            pair = _sequential_mlp(m, i)
            if pair is None and isinstance(m[i], nn.Linear) and i > 0:
                pair = _sequential_mlp(m, i - 1)  # the output projection of the MLP before
                pair = pair if pair and pair[1] == i else None
            if pair:
                return name, [m[pair[0]]], m[pair[1]]
    return None


def _sequential_mlp(m: nn.Sequential, i: int) -> tuple[int, int] | None:
    """``(input, output)`` indices of the Linear → elementwise modules (activation, dropout, …)
    → Linear of ``m`` whose first Linear or modules between hold index ``i``."""
    before = next((j for j in range(i, -1, -1) if isinstance(m[j], nn.Linear)), None)
    after = next((j for j in range(i + 1, len(m)) if isinstance(m[j], nn.Linear)), None)
    if before is None or after is None or \
            not all(_elementwise(m[j]) for j in range(before + 1, after)):
        return None
    return before, after


def _width(lin: nn.Module) -> int:
    """Output units of an input projection (Linear weight [out, in], Conv1D [in, out])."""
    return lin.weight.shape[0] if isinstance(lin, nn.Linear) else lin.weight.shape[1]


def mlp_linears(model: nn.Module, layer: str, width: int | None = None
                ) -> tuple[list[nn.Module], nn.Module]:
    """``(input projections, output projection)`` of the MLP whose intermediate units ``layer``
    outputs: its activation, or an input projection (``gate_proj``, ``up_proj``, ``c_fc``,
    ``fc1``, BERT's ``intermediate``). The MLP module itself, its output projection, or what holds
    that, output the MLP's output units instead: those are refused, since removing intermediate
    units by their ids would remove other units. Another module inside the MLP (a dropout, a
    custom activation) is taken only when ``width``, the units it was collected with, is the
    MLP's intermediate width."""
    modules = dict(model.named_modules(remove_duplicate=False))
    if layer not in modules:
        raise InputError(f"no module {layer!r} in {type(model).__name__}")
    found = _find_mlp(model, layer)
    if found is None:
        raise InputError(f"{layer!r} is not inside a recognised MLP (Linear → activation → "
                         f"Linear, gate/up/down, c_fc/c_proj, fc1/fc2, intermediate/output), so "
                         f"it cannot be removed structurally: apply the mask with "
                         f"txray_engine.prune.mask_units")
    name, ins, out = found
    target = modules[layer]
    if layer == name or target is model:
        acts = [n for n, m in modules.items() if n.startswith(f"{name}.") and _is_activation(m)]
        hint = f" ({acts[0]!r})" if acts else ""
        raise InputError(f"{layer!r} is the MLP module itself: its output holds the MLP's output "
                         f"units, not the intermediate ones prune_mlp removes. Collect and prune "
                         f"its activation{hint}, or mask {layer!r} with mask_units")
    if any(target is m for m in out.modules()) or any(out is m for m in target.modules()):
        raise InputError(f"{layer!r} outputs the MLP's output units, not its intermediate ones: "
                         f"prune the MLP through its activation, or mask {layer!r} with "
                         f"mask_units")
    if width is not None and int(width) != _width(ins[0]):
        raise InputError(f"{layer!r} was collected with {int(width)} units, but the MLP around "
                         f"it has {_width(ins[0])} intermediate units: its neuron ids are not "
                         f"the MLP's; prune a layer collected on the MLP's activation")
    if not _is_intermediate(target, ins) and width is None:
        raise InputError(f"{layer!r} is neither an input projection nor an activation of the "
                         f"MLP, so its units need not be the intermediate ones (a dropout after "
                         f"the output projection has the output units): prune through the "
                         f"activation, or give width= (the units it was collected with) to check")
    projection = next((i for i in ins if target is i or any(i is d for d in target.modules())),
                      None)
    if projection is not None and not (len(ins) > 1 and projection is ins[-1]):
        # masking a pre-activation unit leaves act(0) flowing into the output projection; only
        # where act(0) = 0 is removing the unit the same (a gated MLP's up_proj always is)
        act = _activation_of(modules, name, ins[0], out)
        if act is not None and not _maps_zero_to_zero(act, ins[0]):
            raise InputError(f"{layer!r} is an input projection whose activation "
                             f"({type(act).__name__}) does not map 0 to 0: a masked unit still "
                             f"passes act(0) on, which removing it cannot keep. Collect and prune "
                             f"the activation's output instead, or mask {layer!r} with "
                             f"mask_units")
    return ins, out


def _activation_of(modules: dict, name: str, first: nn.Module, out: nn.Module):
    """The MLP's activation module: the one inside it (between the projections of a
    ``Sequential``), or None when it is a plain function."""
    mlp = modules.get(name)
    kids = list(mlp) if isinstance(mlp, nn.Sequential) else []
    if any(m is first for m in kids) and any(m is out for m in kids):  # Linear, …, Linear
        i = next(j for j, m in enumerate(kids) if m is first)
        k = next(j for j, m in enumerate(kids) if m is out)
        return next((m for m in kids[i + 1:k] if _is_activation(m)), None)
    return next((m for n, m in modules.items() if n.startswith(f"{name}.") and
                 _is_activation(m)), None)


def _maps_zero_to_zero(act: nn.Module, projection: nn.Module) -> bool:
    """Whether ``act(0) == 0`` (True when it cannot be told)."""
    w = projection.weight
    try:
        with torch.no_grad():
            return bool((act(torch.zeros(1, 4, dtype=w.dtype, device=w.device)) == 0).all())
    except Exception:  # an activation that needs other shapes: nothing to tell
        return True


#: Activation-module types that mix units (not one value per unit)
_MIXING = (nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.Softmax2d, nn.MultiheadAttention, nn.GLU)


def _elementwise(m: nn.Module) -> bool:
    """Modules that keep each unit where it is (an activation, dropout, identity)."""
    return (_is_activation(m) and not isinstance(m, _MIXING)) or \
        isinstance(m, (nn.modules.dropout._DropoutNd, nn.Identity))


def _is_activation(m: nn.Module) -> bool:
    return type(m).__module__ == "torch.nn.modules.activation" or \
        "activation" in type(m).__name__.lower()


def _is_intermediate(m: nn.Module, ins: list[nn.Module]) -> bool:
    """Whether ``m`` is an input projection, a module holding one, or an activation."""
    return any(m is i or any(i is d for d in m.modules()) for i in ins) or _is_activation(m)


def prune_mlp(model: nn.Module, layer: str, units: Iterable[int], width: int | None = None
              ) -> dict:
    """Remove intermediate ``units`` of the MLP around ``layer`` in place; returns sizes.

    ``layer`` outputs the intermediate units (see :func:`mlp_linears`). ``width``: the units the
    layer was collected with (``LayerView.n_neurons``); when given, a layer of another width is
    refused before anything changes, as ids from it would name other units.
    """
    ins, out = mlp_linears(model, layer, width)
    width = _width(ins[0])
    drop = np.unique(unit_ids(units, repr(layer)))
    if drop.size and drop.max() >= width:
        raise InputError(f"units must be in [0, {width}) for {layer!r}")
    if drop.size >= width:
        raise InputError(f"cannot remove all {width} units of {layer!r}")
    keep = torch.as_tensor(np.setdiff1d(np.arange(width), drop))
    with torch.no_grad():
        for lin in ins:
            _shrink_out(lin, keep.to(lin.weight.device))
        _shrink_in(out, keep.to(out.weight.device))
    return {"layer": layer, "before": int(width), "after": int(keep.numel())}
