"""Layer names given as exact module paths or glob patterns (``model.layers.*.mlp.act_fn``).

Without torch: a store's readers (``txray report --layer``) match stored layer names too.
"""

from __future__ import annotations

import fnmatch


def is_pattern(name: str) -> bool:
    """Whether ``name`` is a glob pattern rather than one path."""
    return any(c in name for c in "*?[")


def matches(name: str, key: str) -> bool:
    """Whether layer ``name`` is ``key`` or matches it as a glob pattern."""
    return name == key or fnmatch.fnmatchcase(name, key)


def listed(values) -> list[str]:
    """Names given as a repeated option's values, each also a comma-separated list, as one list:
    ``["a,b", "c"]`` (or ``"a,b,c"``) → ``[a, b, c]`` (commas only: a stage name may hold
    spaces)."""
    values = [values] if isinstance(values, str) else values
    return [x.strip() for v in values for x in v.split(",") if x.strip()]


def expand(keys, names) -> list[str]:
    """``keys`` with each glob pattern replaced by the ``names`` it matches, in their order, each
    once (a pattern that matches none stays as it is: the caller names what it lacks)."""
    out: list[str] = []
    for key in keys:
        hits = [n for n in names if matches(n, key)] if is_pattern(key) else []
        out += hits or [key]
    return list(dict.fromkeys(out))
