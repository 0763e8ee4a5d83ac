"""Files written beside stores (reports, mask files, CSV tables, pruned models): checked before
the work that fills them, and never inside a store."""

from __future__ import annotations

import errno
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


def os_advice(e: OSError) -> str:
    """What to do about ``e`` writing or reading a file the user named."""
    if e.errno == errno.ENOSPC:
        return "free space on its disk, or choose another place"
    if e.errno == errno.EIO:
        return "the disk reported an input/output error: check it, or choose another place"
    return "check the path and its permissions"


def write_replacing(path, write, what: str, errors: tuple = (OSError,)) -> None:
    """Write the ``what`` at ``path`` by ``write(temporary path)`` beside it, then put it in
    place in one step: a full disk, a failing disk or Ctrl-C leaves the file as it was (or
    none), never a truncated one. ``errors`` (an ``OSError`` by default; torch reports a path
    it cannot write as a ``RuntimeError``) become one message naming the file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if not isinstance(e, errors):
            raise
        why = e.strerror if isinstance(e, OSError) and e.strerror else " ".join(str(e).split())
        advice = os_advice(e) if isinstance(e, OSError) else "choose another path"
        raise InputError(f"cannot write the {what} {str(path)!r}: {why}; {advice}") from None
