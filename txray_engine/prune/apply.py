"""Apply a selection to a torch model: a removable mask on any captured layer, or structural
removal of MLP intermediate neurons that shrinks the weights.

Masking zeroes the selected units of a module's output (its last dimension) with a forward hook;
for a recurrent layer this masks what later layers see, not the recurrent state itself.
Structural removal deletes the units from ``Linear → activation → Linear`` blocks (also gated MLPs
such as Llama's ``gate_proj``/``up_proj``/``down_proj``, GPT-2's ``Conv1D`` ``c_fc``/``c_proj``
and BERT's ``intermediate``/``output``): the pruned model computes what the masked model computes.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn

from ..capture.hooks import resolve_layers
from ..errors import InputError


def _zero_units(output, units: torch.Tensor):
    if isinstance(output, nn.utils.rnn.PackedSequence):
        data = output.data.clone()
        data[..., units] = 0
        return output._replace(data=data)
    if isinstance(output, torch.Tensor):
        out = output.clone()
        out[..., units] = 0
        return out
    if isinstance(output, tuple) and output:
        return (_zero_units(output[0], units), *output[1:])
    if isinstance(output, list) and output:
        return [_zero_units(output[0], units), *output[1:]]
    raise InputError(f"cannot mask a module output of type {type(output).__name__}")


def _first_tensor(output):
    """What a mask zeroes: a module output's first tensor (of a PackedSequence: its data)."""
    while isinstance(output, (tuple, list)) and output:
        output = output[0]
    return output.data if isinstance(output, nn.utils.rnn.PackedSequence) else output


def _mask_hook(layer: str, units: torch.Tensor):
    """A forward hook zeroing ``units`` of the output; ids past its width are a clear error (the
    largest id is taken once here, not read back from the device at every forward pass)."""
    top = int(units.max()) if units.numel() else -1

    def hook(module, inputs, output):
        first = _first_tensor(output)
        if not isinstance(first, torch.Tensor):
            return _zero_units(output, units)  # raises its message for this output type
        if first.dim() and top >= first.shape[-1]:
            raise InputError(f"mask of layer {layer!r}: unit {top} is outside its "
                             f"{first.shape[-1]} units (0 to {first.shape[-1] - 1}); was the mask "
                             f"made for this model?")
        return _zero_units(output, units.to(first.device))
    return hook


class UnitMask:
    """Forward hooks that zero selected units; a context manager, or call :meth:`remove`."""

    def __init__(self, model: nn.Module, selection: dict[str, Iterable[int]]):
        modules = dict(model.named_modules())
        self._handles = []
        try:
            for layer, units in selection.items():
                idx = torch.as_tensor(np.asarray(list(units), dtype=np.int64).reshape(-1))
                if idx.numel() and int(idx.min()) < 0:
                    raise InputError(f"mask of layer {layer!r}: unit ids are 0 or more, got "
                                     f"{int(idx.min())}")
                # an exact path, or a pattern: the same units of every module it matches
                names = [layer] if layer in modules else resolve_layers(model, [layer])
                for name in names:
                    self._handles.append(modules[name].register_forward_hook(
                        _mask_hook(name, idx)))
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> "UnitMask":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def mask_units(model: nn.Module, selection: dict[str, Iterable[int]]) -> UnitMask:
    """Zero ``selection[layer]`` units of each layer's output until the mask is removed; a glob
    pattern as ``layer`` masks those units in every module it matches."""
    return UnitMask(model, selection)


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


def mlp_linears(model: nn.Module, layer: str) -> tuple[list[nn.Module], nn.Module]:
    """``(input projections, output projection)`` around the MLP that ``layer`` names (the MLP
    module, or its activation)."""
    modules = dict(model.named_modules())
    if layer not in modules:
        raise InputError(f"no module {layer!r} in {type(model).__name__}")
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
            return [c["gate_proj"], c["up_proj"]], c["down_proj"]
        if {"c_fc", "c_proj"} <= set(c):
            return [c["c_fc"]], c["c_proj"]
        if {"fc1", "fc2"} <= set(c):
            return [c["fc1"]], c["fc2"]
        if {"intermediate", "output"} <= set(c) and hasattr(c["intermediate"], "dense"):
            return [c["intermediate"].dense], c["output"].dense
        if isinstance(m, nn.Sequential) and depth == len(path) - 1:
            i = int(path[-1])
            if 0 < i < len(m) - 1 and isinstance(m[i - 1], nn.Linear) and \
                    isinstance(m[i + 1], nn.Linear):
                return [m[i - 1]], m[i + 1]
    raise InputError(f"{layer!r} is not inside a recognised MLP (Linear → activation → Linear, "
                     f"gate/up/down, c_fc/c_proj, fc1/fc2, intermediate/output), so it cannot be "
                     f"removed structurally: apply the mask with txray_engine.prune.mask_units")


def prune_mlp(model: nn.Module, layer: str, units: Iterable[int]) -> dict:
    """Remove intermediate ``units`` of the MLP around ``layer`` in place; returns sizes."""
    ins, out = mlp_linears(model, layer)
    width = ins[0].weight.shape[0] if isinstance(ins[0], nn.Linear) else ins[0].weight.shape[1]
    drop = np.unique(np.asarray(list(units), dtype=np.int64))
    if drop.size and (drop.min() < 0 or drop.max() >= width):
        raise InputError(f"units must be in [0, {width}) for {layer!r}")
    if drop.size >= width:
        raise InputError(f"cannot remove all {width} units of {layer!r}")
    keep = torch.as_tensor(np.setdiff1d(np.arange(width), drop))
    with torch.no_grad():
        for lin in ins:
            _shrink_out(lin, keep.to(lin.weight.device))
        _shrink_in(out, keep.to(out.weight.device))
    return {"layer": layer, "before": int(width), "after": int(keep.numel())}
