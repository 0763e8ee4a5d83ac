"""The collection settings that shape a stage's distributions beside its model and corpus: two
stages compared across other settings differ by those too (a stage collected again by a later
engine with its defaults, a pilot run with another ``-k``)."""

from __future__ import annotations

#: Settings read from a stage's attributes: (label, where, value when absent). ``k`` is the
#: writer's; the rest are ``txray collect``'s options (a stage written from Python has none, and
#: is compared on ``k`` alone).
SHAPING = (("k", ("k",), None),
           ("--max-length", ("options", "max_length"), None),
           ("--context-overlap", ("options", "context_overlap"), 0),
           ("--special-tokens", ("model", "tokenizer", "special_tokens"), False))


def _at(meta: dict, path: tuple, absent):
    value = meta
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key, absent if key == path[-1] else None)
    return value


def settings_apart(meta_a: dict, meta_b: dict) -> list[str]:
    """``label: A and B`` for each setting of :data:`SHAPING` two stages' attributes give other
    values (settings only one of them records are left out: nothing tells what the other
    used)."""
    out = []
    for label, path, absent in SHAPING:
        if path[0] == "options" and not (isinstance(meta_a.get("options"), dict) and
                                         isinstance(meta_b.get("options"), dict)):
            continue
        if path[0] == "model" and not all(isinstance(_at(m, path[:-1], None), dict)
                                          for m in (meta_a, meta_b)):
            continue
        a, b = _at(meta_a, path, absent), _at(meta_b, path, absent)
        if a is not None and b is not None and a != b:
            out.append(f"{label} {a} and {b}")
    return out


def settings_note(name_a: str, meta_a: dict, name_b: str, meta_b: dict) -> str | None:
    """A sentence naming the :func:`settings_apart` of stages ``name_a`` and ``name_b``, or
    None."""
    apart = settings_apart(meta_a, meta_b)
    if not apart:
        return None
    return (f"stages {name_a!r} and {name_b!r} were collected with other settings "
            f"({'; '.join(apart)}): part of their differences comes from those")
