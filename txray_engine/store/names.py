"""Names of a store's groups: what a stage, layer or stream may be called (no zarr needed, so
that an ``Accumulator`` checks a layer's name when it first sees it, not at its first flush)."""

from __future__ import annotations

import unicodedata

from ..errors import InputError
from ..features.text import is_control

#: Prefix of snapshot groups inside a stage.
SNAPSHOT_PREFIX = "snap-"
#: Group inside a stage holding the vocabularies.
VOCAB_GROUP = "vocab"
#: Arrays of a layer group: a stream group may not take their names
LAYER_ARRAYS = ("neuron_count", "neuron_mass", "examples_value", "examples_doc", "examples_pos",
                "examples_context")


#: The longest name a group's directory may have (a file name's limit on common file systems).
MAX_NAME_BYTES = 255

#: what lists and pairs of stage names are split at (``--stages a,b``, ``a:b``, ``STORE::STAGE``)
STAGE_SEPARATORS = (",", ":")


def check_name(kind: str, name: str) -> str:
    """Stage, layer and stream names become group names: reject what Zarr cannot hold (Zarr
    reads a backslash as '/'), and a stream named as one of a layer's arrays."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name \
            or name.startswith((".", "__")) or name == "zarr.json" \
            or name.startswith(SNAPSHOT_PREFIX) or name == VOCAB_GROUP:
        raise InputError(f"invalid {kind} name {name!r}: use a non-empty name without '/' or "
                         f"'\\', not starting with '.', '__' or '{SNAPSHOT_PREFIX}', and not "
                         f"'{VOCAB_GROUP}' or 'zarr.json'")
    if any(is_control(c) for c in name):
        raise InputError(f"invalid {kind} name {name!r}: a control character (a newline, an "
                         f"escape, NUL, a right-to-left override) or a lone surrogate in it "
                         f"would reach terminals and file names as it is; leave it out")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InputError(f"invalid {kind} name {name[:40]!r}…: {len(name.encode('utf-8'))} bytes "
                         f"of UTF-8, and a file name holds at most {MAX_NAME_BYTES}; shorten it")
    if kind == "stream" and name in LAYER_ARRAYS:
        raise InputError(f"invalid stream name {name!r}: a layer's group holds an array of that "
                         f"name; choose another")
    return name


def check_new_stage_name(name: str, existing=()) -> str:
    """What a new stage may be called beyond :func:`check_name` (stages written before this rule
    stay readable, resumable and replaceable): nor a name that reads as one of the ``existing``
    (the same letters in another Unicode form, 'café' composed or decomposed: two stages a
    reader cannot tell apart, one folder on file systems that normalise names)."""
    if name != name.strip() or any(c in name for c in STAGE_SEPARATORS):
        raise InputError(f"invalid stage name {name!r}: commands name stages in lists and pairs "
                         f"(--stages a,b, --pairs a:b, STORE::STAGE), so a stage name has no "
                         f"{', '.join(map(repr, STAGE_SEPARATORS))} and no space at either end")
    form = unicodedata.normalize("NFC", name)
    same = [s for s in existing if s != name and unicodedata.normalize("NFC", s) == form]
    if same:
        raise InputError(f"stage name {ascii(name)} reads as the existing stage {ascii(same[0])} "
                         f"(the same letters in another Unicode form): use that name, or "
                         f"another")
    return name
