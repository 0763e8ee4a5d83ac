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
