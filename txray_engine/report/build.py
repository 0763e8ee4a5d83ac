"""``build_report``: a store in, one self-contained HTML file out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..capture.names import listed
from ..errors import InputError, whole_number
from ..store.outputs import output_path, write_replacing
from .data import Limits, ReportData


@dataclass
class Report:
    """What ``build_report`` wrote."""

    path: Path
    size: int
    stages: list[str]
    layers: list[str]
    pairs: list[tuple[str, str]]
    stream: str
    figures: int
    notes: list[str] = field(default_factory=list)


def build_report(store_path, stages=None, layers=None, out="report.html", *, stream=None,
                 max_neurons: int = 4096, max_points: int = 3000, top_features: int = 6,
                 changed: int = 10, by: str = "mass", min_count: int = 1,
                 min_neuron_count: int = 1, title: str | None = None, pairs=None) -> Report:
    """Write an HTML report of a store and return what was written.

    Parameters
    ----------
    store_path : path of a txray store.
    stages : stage names in the order to compare (consecutive pairs); default all, in the order
        they were collected.
        One stage gives the single-stage plots only.
    pairs : (A, B) stage pairs to compare instead of consecutive stages (e.g. a zero-shot stage
        against each fine-tuning seed: ``[("zero-shot", "s0"), ("zero-shot", "s1")]``); the
        stages are those of the pairs, in order of appearance. Not with ``stages``.
    layers : layer names; default every layer the chosen stages share.
    out : HTML file to write (its folder is created).
    stream : stream of the Hellinger comparisons and tables; default ``token`` when present.
    max_neurons : neurons per layer embedded in the neuron explorer (most activation mass first).
    max_points : points per curve or scatter trace.
    top_features : top features per neuron, stage and stream in the explorer.
    changed : neurons in each most / least changed table.
    by, min_count, min_neuron_count : options of the measures (see ``txray_engine.measures``);
        ``min_neuron_count`` counts neurons selected fewer times as dead in the comparisons.
    title : page title (default: from the store's folder name).

    Raises ``StoreError`` (no or damaged store, unknown stage) and ``InputError`` (unknown layer or
    stream, bad options) before anything is written.
    """
    from ..store import open_store
    try:
        from .page import render
    except ModuleNotFoundError as e:
        if e.name != "plotly" and not str(e.name).startswith("plotly."):
            raise
        raise InputError("the HTML report needs plotly: pip install plotly") from None

    if by not in ("mass", "count"):
        raise InputError(f"by must be 'mass' or 'count', got {by!r}")
    min_count, min_neuron_count = (whole_number(v, n, 1) for n, v in (
        ("min_count", min_count), ("min_neuron_count", min_neuron_count)))
    limits = Limits(max_points=whole_number(max_points, "max_points"),
                    max_neurons=whole_number(max_neurons, "max_neurons"),
                    explorer_features=whole_number(top_features, "top_features"),
                    changed=whole_number(changed, "changed"))
    out = output_path(out, "report")  # before the work: a path that cannot be written fails now
    # "a,b" and "a:b,a:c" as on the command line
    stages, layers, pairs = (listed(v) if isinstance(v, str) else v
                             for v in (stages, layers, pairs))
    data = ReportData(open_store(store_path), stages, layers, stream, limits, by, min_count,
                      min_neuron_count, pairs)
    html, n_figures = render(data, title)
    output_path(out, "report", create=True)
    # (a lone surrogate in a store made elsewhere is written as its escape, not refused)
    write_replacing(out, lambda tmp: tmp.write_text(html, encoding="utf-8",
                                                    errors="backslashreplace"), "report")
    return Report(path=out, size=out.stat().st_size, stages=data.stages, layers=data.layers,
                  pairs=data.pairs, stream=data.stream, figures=n_figures,
                  notes=list(dict.fromkeys(data.notes)))
