"""Files written beside stores (reports, mask files, CSV tables, pruned models): checked before
the work that fills them, and never inside a store."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import InputError


def store_holding(path: Path) -> Path | None:
    """The txray store ``path`` is in or is (the nearest folder whose ``zarr.json`` names a txray
    store), or None."""
    from .format import ATTR  # (with zarr: not at the command line's start)

    for folder in (path, *path.parents):
        try:
            meta = json.loads((folder / "zarr.json").read_text())
        except (OSError, ValueError):
            continue
        attrs = meta.get("attributes", {}).get(ATTR) if isinstance(meta, dict) else None
        if isinstance(attrs, dict) and attrs.get("format") == "txray-store":
            return folder
    return None


def output_path(path, what: str = "file", create: bool = False) -> Path:
    """``path`` of a ``what`` to write, checked: not a folder, not inside a txray store (its every
    file belongs to the format: readers warn about others), in a folder that is (or can be)
    made and written. ``create``: make the missing folders."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise InputError(f"the {what}'s path must be a file name, got {path!r}")
    out = Path(path)
    if out.is_dir():
        raise InputError(f"{str(out)!r} is a folder: give a file name for the {what}")
    store = store_holding(out.resolve().parent)  # ('..' and links resolved)
    if store is not None:
        raise InputError(f"{str(out)!r} is inside the txray store {str(store)!r}: write the "
                         f"{what} outside the store")
    folder = next((p for p in out.absolute().parents if p.exists()), None)
    if folder is not None and not folder.is_dir():
        raise InputError(f"cannot write {str(out)!r}: {str(folder)!r} is a file, not a folder")
    if folder is not None and not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {str(out)!r}: the folder {str(folder)!r} is not "
                         f"writable; choose another path")
    if create:
        out.parent.mkdir(parents=True, exist_ok=True)
    return out
