"""Numba's on-disk cache of the CPU kernels, kept in step with their sources.

numba drops a cached kernel when the file that defines it changes, not when a file it calls into
does: the kernels of :mod:`txray_kernels.cpu_half`, :mod:`txray_kernels.cpu_table` and
:mod:`txray_kernels.cpu_examples` compile in functions of :mod:`txray_kernels.cpu`, :mod:`txray_kernels.cpu_half`
and :mod:`txray_kernels.cpu_scatter`, and several use :mod:`txray_kernels.prefetch`. An edit (or a checkout)
touching only ``cpu.py`` would leave the 16-bit path running the old code. So, before any of them compiles,
:func:`drop_stale` removes the cache of every CPU kernel when a kernel source is newer than the
oldest cache index; they compile again on first use.
"""

from __future__ import annotations

from pathlib import Path

SOURCES = ("cpu", "cpu_half", "cpu_scatter", "cpu_table", "cpu_examples", "prefetch")


def drop_stale(folder: Path | None = None) -> bool:
    """Remove the cached CPU kernels in ``folder``'s ``__pycache__`` (default: this package's) if
    any of :data:`SOURCES` is newer than the oldest of their cache indexes; returns whether it
    did. A cache numba keeps elsewhere (a read-only install) is left alone."""
    folder = Path(__file__).parent if folder is None else folder
    cache = folder / "__pycache__"
    try:
        files = [p for p in cache.glob("*.nb[ic]") if p.name.split(".")[0] in SOURCES]
        index = [p.stat().st_mtime for p in files if p.suffix == ".nbi"]
        if not index or max((folder / f"{s}.py").stat().st_mtime for s in SOURCES) <= min(index):
            return False
        for p in files:
            p.unlink()
    except OSError:
        return False
    return True
