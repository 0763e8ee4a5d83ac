"""``NeuronTable``: a small columnar table (one row per neuron) with CSV/JSON output."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np

from ..errors import InputError, whole_number


def column_of(columns: dict, name: str) -> np.ndarray:
    """``columns[name]``, or an error that lists the columns."""
    try:
        return columns[name]
    except (KeyError, TypeError):
        raise InputError(f"no column {name!r}; the columns are {', '.join(columns)}") from None


class NeuronTable:
    """Columns of equal length, ``neuron`` first."""

    def __init__(self, columns: dict[str, np.ndarray]):
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise InputError(f"a NeuronTable's columns are one value per neuron, of one length; "
                             f"got lengths {sorted(lengths)}")
        self.columns = {k: np.asarray(v) for k, v in columns.items()}

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def __getitem__(self, name: str) -> np.ndarray:
        return column_of(self.columns, name)

    def __repr__(self) -> str:
        """The first rows as :meth:`format` renders them (what a REPL shows)."""
        shown = 10
        text = f"NeuronTable: {len(self)} rows\n" + self.head(shown).format()
        return text + (f"\n... {len(self) - shown} more rows" if len(self) > shown else "")

    @property
    def names(self) -> list[str]:
        """Column names, in order."""
        return list(self.columns)

    def take(self, idx) -> "NeuronTable":
        """The rows at positions ``idx`` (in that order)."""
        return NeuronTable({k: v[idx] for k, v in self.columns.items()})

    def where(self, mask) -> "NeuronTable":
        """The rows where ``mask`` (a bool column, e.g. ``table["shared"]``) is true."""
        return self.take(np.flatnonzero(mask))

    def sort(self, column: str, descending: bool = True) -> "NeuronTable":
        """Rows by ``column`` (NaN last; ties by neuron id)."""
        v = self[column].astype(np.float64)
        key = np.where(np.isnan(v), np.inf, -v if descending else v)
        return self.take(np.lexsort((self.columns.get("neuron", np.arange(len(self))), key)))

    def head(self, n: int) -> "NeuronTable":
        """The first ``n`` rows."""
        return self.take(np.arange(min(whole_number(n, "n"), len(self))))

    def records(self) -> list[dict]:
        """One dict per row, Python values (NaN as None): ``pandas.DataFrame(t.records())``."""
        def py(x):
            x = x.item() if hasattr(x, "item") else x
            return None if isinstance(x, float) and math.isnan(x) else x
        return [{k: py(v[i]) for k, v in self.columns.items()} for i in range(len(self))]

    def to_csv(self, path=None) -> str | None:
        """The table as CSV (NaN as an empty field), written to ``path`` or returned.

        A text cell that a spreadsheet would run as a formula (one starting with ``= + - @``, a
        tab or a carriage return: a layer or stream name from someone else's store) is written
        with a leading ``'``, which spreadsheets read as "text" and do not show."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow([_cell(c) for c in self.names])
        for r in self.records():
            w.writerow(["" if v is None else _cell(v) for v in r.values()])
        if path is None:
            return buf.getvalue()
        from ..store.outputs import write_replacing
        write_replacing(path, lambda tmp: tmp.write_text(buf.getvalue(), newline=""), "table")
        return None

    def to_json(self) -> str:
        """The :meth:`records` as a JSON list."""
        return json.dumps(self.records())

    def format(self, columns: list[str] | None = None, digits: int = 4) -> str:
        """A fixed-width text rendering."""
        cols = columns or self.names
        cells = [[_fmt(r[c], digits) for c in cols] for r in self.records()]
        widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
        lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths))]
        lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
        return "\n".join(lines)


def _cell(v):
    return "'" + v if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r") else v


def _fmt(v, digits):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)
