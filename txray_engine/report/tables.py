"""HTML tables of a report: comparison summaries, most and least changed neurons with their top
features in both stages side by side, and the stages of the store."""

from __future__ import annotations

import html

import numpy as np

from .data import FEATURE_CHARS, ReportData, feature_label


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def feature_chips(items: list[tuple[str, float]]) -> str:
    """Features as inline chips, ``repr`` of the string and its share."""
    if not items:
        return '<span class="muted">none</span>'
    return " ".join(f'<span class="feat"{_whole(f)}><bdi>{esc(feature_label(f))}</bdi> '
                    f'<small>{s:.0%}</small></span>' for f, s in items)  # (bdi: right-to-left
    # text keeps its share after it)


def _whole(f: str) -> str:
    """A cut feature's whole string as the chip's tooltip."""
    return f' title="{esc(f)}"' if len(f) > FEATURE_CHARS else ""


def neuron_link(layer: str, neuron: int) -> str:
    """A link that opens the neuron in the explorer (handled by the page's script)."""
    return (f'<a href="#explorer" class="nlink" data-layer="{esc(layer)}" '
            f'data-neuron="{int(neuron)}">{int(neuron)}</a>')


def _num(x, fmt="{:.3f}") -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "–"
    return fmt.format(x)


def stages_table(data: ReportData) -> str:
    """One row per chosen stage: status, tokens, k, layers and streams."""
    rows = []
    for s in data.stages:
        st = data.stage_objs[s]
        layers = ", ".join(f"{esc(n)} ({st.meta.get('layers', {}).get(n, '?')})"
                           for n in st.layers if n in data.layers)
        streams = ", ".join(f"{esc(n)} ({v.get('size', '?'):,})" if isinstance(v.get("size"), int)
                            else esc(n) for n, v in st.meta.get("streams", {}).items())
        rows.append(f"<tr><td><b>{esc(s)}</b></td><td>{esc(st.status)}</td>"
                    f"<td class=num>{st.tokens:,}</td><td class=num>{esc(st.k)}</td>"
                    f"<td>{layers}</td><td>{streams}</td></tr>")
    return ("<table class=grid><thead><tr><th>stage</th><th>status</th><th>tokens</th><th>k</th>"
            "<th>layers shown (neurons)</th><th>streams (features)</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def summary_table(data: ReportData, layer: str) -> str:
    """Per consecutive pair: shared and dead neurons, Hellinger mean/median, mean length shift."""
    rows, no_distance = [], []
    for a, b in data.pairs:
        cmp = data.comparison(a, b, layer)
        if cmp is None:
            continue
        s = cmp.summary()
        if s["shared_without_distribution"]:
            no_distance.append(f"{esc(a)} → {esc(b)}: {s['shared_without_distribution']:,}")
        rows.append(f"<tr><td>{esc(a)} → {esc(b)}</td><td class=num>{s['shared']:,}</td>"
                    f"<td class=num>{s['only_a']:,}</td><td class=num>{s['only_b']:,}</td>"
                    f"<td class=num>{s['dead_both']:,}</td>"
                    f"<td class=num>{_num(s['hellinger_mean'])}</td>"
                    f"<td class=num>{_num(s['hellinger_median'])}</td>"
                    f"<td class=num>{_num(s['length_shift_mean'], '{:+.2f}')}</td></tr>")
    if not rows:
        return ""
    if no_distance:
        rows.append(f"<tr><td colspan=8 class=muted>Shared neurons without a distance (no "
                    f"{esc(data.stream)} feature with {esc(data.by)} in a stage: activations 0 or "
                    f"below, or cells under --min-count), left out of the Hellinger mean: "
                    f"{'; '.join(no_distance)}.</td></tr>")
    alive = (f"<p class=muted>A neuron counts as alive where it was selected at least "
             f"{data.min_neuron_count:,} times (--min-neuron-count): one selected fewer times in "
             f"one stage is only in the other, not new or lost.</p>"
             if data.min_neuron_count > 1 else "")
    return (f"<table class=grid><thead><tr><th>{esc(data.stream)} stream</th><th>shared</th>"
            "<th>only in A</th><th>only in B</th><th>dead in both</th><th>Hellinger mean</th>"
            "<th>median</th><th>mean length shift</th></tr></thead><tbody>" + "".join(rows)
            + "</tbody></table>" + alive)


def changed_table(data: ReportData, layer: str, a: str, b: str) -> str:
    """The most and the least changed shared neurons (ties: more mass first), top features of
    both stages side by side."""
    cmp = data.comparison(a, b, layer)
    if cmp is None:
        return ""
    lim, stream = data.limits, data.stream
    parts = []
    table = cmp.table()
    for which, ids in zip(("most", "least"), cmp.extremes(lim.changed)):
        title = f"{lim.changed} {which} changed"
        part = table.take(ids)
        if not len(part):
            shared = int(cmp["shared"].sum())
            why = ("no neuron is alive in both stages" if not shared else
                   f"none of the {shared:,} shared neurons has a distance")
            parts.append(f"<p class=muted>{esc(title)}: {why}.</p>")
            continue
        title = f"{ids.size} {which} changed"
        rows = []
        for r in part.records():
            n = int(r["neuron"])
            rows.append(
                f"<tr><td class=num>{neuron_link(layer, n)}</td>"
                f"<td class=num>{_num(r['hellinger'])}</td>"
                f"<td class=num>{r['selected_a']:,} → {r['selected_b']:,}</td>"
                f"<td class=num>{r['length_a']:,} → {r['length_b']:,}</td>"
                f"<td class=num>{r['mass_a']:.3g} → {r['mass_b']:.3g}</td>"
                f"<td>{feature_chips(data.features(a, layer, stream, n, lim.table_features))}</td>"
                f"<td>{feature_chips(data.features(b, layer, stream, n, lim.table_features))}</td>"
                "</tr>")
        parts.append(
            f"<h4>{esc(title)}</h4><table class='grid changed'><thead><tr><th>neuron</th>"
            f"<th>Hellinger</th><th>selected</th><th>length</th><th title='activation mass of the "
            f"{esc(stream)} cells the comparison kept (--min-count); the explorer shows the "
            f"layer&#39;s'>mass ({esc(stream)})</th><th>top {esc(stream)} features in "
            f"{esc(a)}</th><th>top {esc(stream)} features in {esc(b)}</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")
    return "".join(parts)
