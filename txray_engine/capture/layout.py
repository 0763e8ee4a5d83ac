"""Layout: which axes of a captured output are the batch, the positions and the neurons.

The engine counts activations ``[batch, time, neurons]``. Modules lay their outputs out in one of
three ways, and a wrong guess cannot always be seen from the shape (when the batch has as many
sequences as positions, or as many positions as neurons), so the layout of each layer is decided
once, from the module, and can be given:

- ``batch_first``: ``[batch, time, neurons]`` (Linear, attention and MLP blocks of Hugging Face
  models, recurrent modules with ``batch_first=True``);
- ``time_first``: ``[time, batch, neurons]`` (``nn.LSTM``/``nn.GRU``/``nn.RNN``, and
  ``nn.MultiheadAttention``/``nn.Transformer*Layer`` with ``batch_first=False``, torch's
  default; also every module inside such a module, e.g. its ``linear1``);
- ``channels_first``: ``[batch, neurons, time]`` (``nn.Conv1d`` and the other ``*1d`` modules
  over sequences: pooling, batch and instance norm).

A module is recognised by its type, and by the ``batch_first`` flag of the nearest of itself and
the modules that contain it that is one of torch's recurrent, attention or transformer modules;
anything else is taken as batch-first unless the caller says otherwise (``layouts=`` per layer,
or a default for the whole model).
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import nn

from ..errors import InputError
from .names import matches

LAYOUTS = ("batch_first", "time_first", "channels_first")

# modules over [batch, channels, length] sequences
_CHANNELS_FIRST = (nn.Conv1d, nn.ConvTranspose1d, nn.BatchNorm1d, nn.InstanceNorm1d,
                   nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveMaxPool1d, nn.AdaptiveAvgPool1d,
                   nn.LPPool1d)


def check_layout(layout, what: str) -> str:
    if layout not in LAYOUTS:
        raise InputError(f"{what}: layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    return layout


def recognised_layout(modules: Mapping[str, nn.Module], name: str) -> str | None:
    """The layout the module at ``name`` says it has (see the module docstring); None when
    neither its type nor a ``batch_first`` flag of it or a containing module tells."""
    if isinstance(modules[name], _CHANNELS_FIRST):
        return "channels_first"
    path = name.split(".") if name else []
    for i in range(len(path), -1, -1):  # the module itself, then its parents up to the model
        flag = _batch_first(modules.get(".".join(path[:i])))
        if flag is not None:
            return "batch_first" if flag else "time_first"
    return None


def _batch_first(module) -> bool | None:
    """The ``batch_first`` flag of torch's recurrent, attention and transformer modules (the
    layers keep it in their attention, ``self_attn``; the stacks in their layers); None for
    any other module, whose attribute of that name may mean something else (a model that keeps
    ``batch_first=False`` for its LSTM and transposes around it)."""
    if isinstance(module, (nn.RNNBase, nn.MultiheadAttention, nn.Transformer)):
        return bool(module.batch_first)
    if isinstance(module, (nn.TransformerEncoder, nn.TransformerDecoder)):
        return _batch_first(module.layers[0]) if len(module.layers) else None
    if isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
        return _batch_first(module.self_attn)
    return None


def resolve_layouts(modules: Mapping[str, nn.Module], names: list[str],
                    given: Mapping[str, str] | None = None,
                    default: str = "batch_first") -> dict[str, str]:
    """Each captured layer's layout: given by exact name, else by a given glob pattern (the last
    one matching), else recognised from the module, else ``default``."""
    given = dict(given or {})
    chosen: dict[str, str] = {}
    for key, layout in given.items():
        check_layout(layout, f"layouts[{key!r}]")
        hits = [n for n in names if matches(n, key)]
        if not hits:
            raise InputError(f"layouts names {key!r}, which matches none of the captured layers "
                             f"({', '.join(names)}): give a captured layer's name or pattern")
    for name in names:
        exact = given.get(name)
        patterns = [lay for key, lay in given.items() if key != name and matches(name, key)]
        chosen[name] = exact or (patterns[-1] if patterns else None) or \
            recognised_layout(modules, name) or default
    return chosen


def to_batch_first(x: torch.Tensor, layout: str) -> torch.Tensor:
    """``x`` as ``[batch, time, ..., neurons]`` (a view); outputs with fewer than 3 axes have no
    time axis to move."""
    if x.dim() < 3 or layout == "batch_first":
        return x
    if layout == "time_first":
        return x.transpose(0, 1)
    return x.movedim(1, -1)  # channels_first


def unit_axis(layout: str, ndim: int) -> int:
    """The axis of the neurons in an output of ``ndim`` axes with ``layout``."""
    return 1 if layout == "channels_first" and ndim >= 3 else -1


def names_with(layouts: Mapping[str, str], layout: str) -> list[str]:
    return sorted(n for n, lay in layouts.items() if lay == layout)


def legacy_time_first(modules: Mapping[str, nn.Module], name: str,
                      explicit: Iterable[str]) -> bool:
    """Whether versions before layouts took the layer as time-first (named in ``time_first``, or a
    recurrent module with ``batch_first=False``): stages collected then record only those."""
    module = modules[name]
    return name in set(explicit) or (isinstance(module, nn.RNNBase) and not module.batch_first)
