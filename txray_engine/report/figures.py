"""Plotly figures of a report, built from a :class:`~txray_engine.report.data.ReportData`.

Each builder returns a :class:`Plot` (the figure, a caption saying what is shown and what was
capped) or None when the data for it is missing. Traces use SVG (no WebGL) and carry the neuron id
as the first ``customdata`` column, so the page can link a clicked point to the neuron explorer.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from ..measures import feature_group_mass
from .data import (LENGTH_STREAMS, POS_STREAM, ReportData, even_ranks, feature_text,
                   sample)

#: Plotly config of every figure: no logo link, no cloud buttons, responsive width.
CONFIG = {"displaylogo": False, "responsive": True,
          "modeBarButtonsToRemove": ["select2d", "lasso2d"]}

COLORS = ["#3b6fb6", "#e07b39", "#4a9d5b", "#b04a8f", "#7d6bc2", "#c9a227", "#3aa6a0", "#9a5b3c"]
GRID = dict(gridcolor="#e3e6ea", zerolinecolor="#b9bfc8", linecolor="#b9bfc8")

#: A small template (plotly's default one adds ~5 KB of JSON to every figure).
TEMPLATE = go.layout.Template(layout=dict(
    font=dict(family="system-ui, -apple-system, 'Segoe UI', sans-serif", size=12, color="#222"),
    colorway=COLORS, paper_bgcolor="white", plot_bgcolor="#f8f9fb", hovermode="closest",
    hoverlabel=dict(align="left"), margin=dict(l=70, r=20, t=70, b=55),
    legend=dict(orientation="h", y=1.0, yanchor="bottom", x=0, xanchor="left"),
    xaxis=GRID, yaxis=GRID))


@dataclass
class Plot:
    """A figure, the layer it belongs to and a caption (plain text)."""

    figure: go.Figure
    layer: str
    caption: str

    def to_html(self, div_id: str) -> str:
        """The figure as a ``<div>`` with its ``Plotly.newPlot`` call (plotly.js not included)."""
        height = int(self.figure.layout.height or 420)
        return pio.to_html(self.figure, full_html=False, include_plotlyjs=False, div_id=div_id,
                           config=CONFIG, default_height=f"{height}px", default_width="100%")


def _text(s) -> str:
    """A string for plotly's text (titles, names, hover): plotly reads ``<b>``-like tags and
    decodes ``&amp; &lt; &gt;``, not ``&quot;`` (shown as such in a quoted token), so only those
    three are escaped. In a hover template, names go in the trace's ``meta`` (``%{meta[0]}``):
    plotly expands ``%{…}`` in the template itself, not in what it puts there."""
    return html.escape(str(s), quote=False)


def _layout(fig: go.Figure, title: str, height: int) -> go.Figure:
    fig.update_layout(template=TEMPLATE, title=dict(text=_text(title), x=0.01),
                      height=height)
    return fig


def _capped(n_shown: int, n_total: int, what: str, how: str) -> str:
    if n_shown >= n_total:
        return ""
    return f" Showing {n_shown:,} of {n_total:,} {what} ({how})."


def _log_ticks(fig: go.Figure) -> dict:
    """Powers of ten only when the y values span more than a decade and a half (plotly labels
    every digit otherwise)."""
    ys = [np.asarray(t.y, dtype=np.float64) for t in fig.data if t.y is not None and len(t.y)]
    ys = np.concatenate(ys) if ys else np.zeros(0)
    ys = ys[ys > 0]
    if ys.size and np.log10(ys.max() / ys.min()) >= 1.5:
        return {"dtick": 1, "tickformat": "~s"}
    return {}


def _budget_note(data: ReportData, stages: list[str], what: str) -> str:
    """A sentence when the stages counted rather different numbers of positions (their sums and
    lengths grow with it), else ""."""
    tokens = {s: data.stage_objs[s].tokens for s in stages}
    if len(tokens) < 2 or max(tokens.values()) <= 1.2 * max(1, min(tokens.values())):
        return ""
    counts = ", ".join(f"{s}: {t:,}" for s, t in tokens.items())
    return (f" The stages counted different numbers of positions ({counts}): {what} grow with "
            f"the positions counted, so compare them at equal token budgets "
            f"(txray collect --max-documents).")


# -- 1. activation mass ----------------------------------------------------------------------------
def mass_figure(data: ReportData, layer: str) -> Plot:
    """Activation mass per neuron, each stage sorted by mass (rank 1 = most), log scale."""
    fig = go.Figure()
    cap, dead, capped = data.limits.max_points, [], []
    for i, stage in enumerate(data.stages):
        lv = data.layer(stage, layer)
        mass = np.asarray(lv.neuron_mass, dtype=np.float64)
        count = np.asarray(lv.neuron_count)
        ids = np.flatnonzero(mass > 0)
        dead.append(f"{stage}: {lv.n_neurons - ids.size:,} of {lv.n_neurons:,}")
        order = ids[np.argsort(-mass[ids], kind="stable")]
        pos = even_ranks(order.size, cap)
        if pos.size < order.size:
            capped.append(f"{stage}: {pos.size:,} of {order.size:,}")
        nid = order[pos]
        fig.add_trace(go.Scatter(
            x=pos + 1, y=mass[nid], name=_text(stage),
            mode="lines+markers" if nid.size <= 200 else "lines",
            marker=dict(size=4), line=dict(width=2, color=COLORS[i % len(COLORS)]),
            customdata=np.stack([nid, count[nid]], axis=1),
            hovertemplate=("neuron %{customdata[0]}<br>rank %{x}<br>mass %{y:.4g}<br>selected "
                           "%{customdata[1]} times<extra>%{meta[0]}</extra>"),
            meta=[_text(stage)]))
    fig.update_yaxes(type="log", title_text="activation mass (log)", **_log_ticks(fig))
    fig.update_xaxes(title_text="neurons, sorted by mass (rank)")
    caption = ("Sum of the clamped activations of each neuron at the positions where it was among "
               "the top-k, per stage, sorted from most to least mass. Neurons with no mass "
               "(never selected, or selected only where their activation was 0 or below) cannot "
               "be drawn on a log scale and are left out: " + "; ".join(dead) + ".")
    caption += _budget_note(data, data.stages, "sums of activations")
    if capped:
        caption += (" Curves are drawn through evenly spaced ranks: " + "; ".join(capped) +
                    " neurons shown.")
    return Plot(_layout(fig, f"{layer}: activation mass per neuron", 420), layer, caption)


# -- 2. Hellinger distance against Hellinger length ------------------------------------------------
def hellinger_figure(data: ReportData, layer: str, a: str, b: str) -> Plot | None:
    """Hellinger distance against the union support (Hellinger length) per shared neuron."""
    cmp = data.comparison(a, b, layer)
    if cmp is None:
        return None
    lim, stream = data.limits, data.stream
    shared = np.flatnonzero(cmp["shared"])
    drawn = shared[~np.isnan(cmp["hellinger"][shared])]  # (no distance: nothing to draw)
    most, least = cmp.extremes(lim.changed)
    shown = sample(drawn, lim.max_points, keep=np.concatenate([most, least]))
    fig = go.Figure()
    groups = [("other shared neurons", np.setdiff1d(shown, np.concatenate([most, least])),
               "#8795a8", 5),
              (f"{least.size} least changed", np.intersect1d(shown, least), "#4a9d5b", 8),
              (f"{most.size} most changed", np.intersect1d(shown, most), "#d1453b", 8)]
    n = lim.hover_features
    for name, ids, color, size in groups:
        if not ids.size:
            continue
        fa = [_text(feature_text(data.features(a, layer, stream, int(i), n))) for i in ids]
        fb = [_text(feature_text(data.features(b, layer, stream, int(i), n))) for i in ids]
        custom = np.empty((ids.size, 5), dtype=object)
        custom[:, 0], custom[:, 1], custom[:, 2] = ids, fa, fb
        custom[:, 3], custom[:, 4] = cmp["length_a"][ids], cmp["length_b"][ids]
        fig.add_trace(go.Scatter(
            x=cmp["hellinger_length"][ids], y=cmp["hellinger"][ids], mode="markers", name=name,
            marker=dict(size=size, color=color, opacity=0.75, line=dict(width=0)),
            customdata=custom,
            hovertemplate=("<b>neuron %{customdata[0]}</b><br>Hellinger %{y:.3f}, union support "
                           "%{x}<br>length %{customdata[3]} → %{customdata[4]}<br>"
                           "%{meta[0]}: %{customdata[1]}<br>%{meta[1]}: %{customdata[2]}"
                           "<extra></extra>"), meta=[_text(a), _text(b)]))
    fig.update_xaxes(type="log", title_text="Hellinger length (features in either stage, log)")
    fig.update_yaxes(title_text="Hellinger distance", range=[-0.02, 1.02])
    missing = int(cmp.summary()["shared_without_distribution"])
    caption = (f"{stream} stream, {a} → {b}: one point per neuron alive in both stages "
               f"({shared.size:,} of {cmp.n_neurons:,}). Distance 0: same distribution over "
               f"features; 1: no feature in common. Hover shows the top {n} features per stage; "
               f"click a point to open the neuron in the explorer.")
    if missing:
        caption += (f" {missing:,} of the shared neurons have no distance and are not drawn: "
                    f"no {stream} feature with {data.by} in one of the stages (all their "
                    f"activations 0 or below, or cells under --min-count).")
    caption += _capped(shown.size, drawn.size, "shared neurons with a distance",
                       f"a seeded random sample that keeps the {most.size} most and "
                       f"{least.size} least changed")
    return Plot(_layout(fig, f"{layer}: {a} → {b}, Hellinger distance vs length ({stream})", 460),
                layer, caption)


# -- 3. length shift -------------------------------------------------------------------------------
def length_shift_figure(data: ReportData, layer: str, a: str, b: str) -> Plot | None:
    """Per shared neuron, ``length_b - length_a`` for the token and POS streams, sorted."""
    streams = [s for s in LENGTH_STREAMS if data.comparison(a, b, layer, s) is not None]
    if not streams:
        return None
    cap = data.limits.max_points
    fig = make_subplots(rows=1, cols=len(streams), horizontal_spacing=0.08,
                        subplot_titles=[_text(s) for s in streams])
    capped = []
    for col, s in enumerate(streams, start=1):
        cmp = data.comparison(a, b, layer, s)
        shared = np.flatnonzero(cmp["shared"])
        shift = cmp["length_shift"][shared]
        order = shared[np.argsort(shift, kind="stable")]
        pos = even_ranks(order.size, cap)
        if pos.size < order.size:
            capped.append(f"{s}: {pos.size:,} of {order.size:,}")
        ids = order[pos]
        mean = float(shift.mean()) if shift.size else 0.0
        fig.layout.annotations[col - 1].text = (f"{_text(s)}: mean shift {mean:+.2f} over "
                                                f"{shared.size:,} shared neurons")
        fig.add_trace(go.Scatter(
            x=pos + 1, y=cmp["length_shift"][ids], mode="lines+markers", name=_text(s),
            showlegend=False,
            marker=dict(size=4, color=COLORS[(col - 1) % len(COLORS)]), line=dict(width=1),
            customdata=np.stack([ids, cmp["length_a"][ids], cmp["length_b"][ids]], axis=1),
            hovertemplate=("neuron %{customdata[0]}<br>length %{customdata[1]} → "
                           "%{customdata[2]} (%{y:+d})<extra>%{meta[0]}</extra>"),
            meta=[_text(s)]),
            row=1, col=col)
        fig.add_hline(y=0, line=dict(color="#888", width=1, dash="dot"), row=1, col=col)
        fig.update_xaxes(title_text="shared neurons, sorted by shift", row=1, col=col)
    fig.update_yaxes(title_text=_text(f"length in {b} − length in {a}"), row=1, col=1)
    missing = [s for s in LENGTH_STREAMS if s not in streams]
    caption = (f"{a} → {b}: change in the number of features each neuron fired for (TX-Ray's "
               f"length), per neuron alive in both stages. Below 0: it fired for fewer "
               f"distinct features, which a neuron selected less often does too: read it "
               f"against the selections (tables below) before calling it specialised.")
    caption += _budget_note(data, [a, b], "lengths (features seen)")
    if missing:
        caption += f" No {' or '.join(missing)} stream in both stages: not shown."
    if capped:
        caption += " Drawn through evenly spaced ranks: " + "; ".join(capped) + " neurons shown."
    return Plot(_layout(fig, f"{layer}: {a} → {b}, length shift", 400), layer, caption)


# -- 4. POS: corpus share against mass share -------------------------------------------------------
def pos_figure(data: ReportData, layer: str) -> Plot | None:
    """Per POS tag and stage: share of corpus positions, of activation mass, and of the neurons
    whose distribution puts most weight on the tag."""
    stages = [s for s in data.stages if data.has_stream(s, POS_STREAM)]
    if not stages:
        return None
    groups = {s: feature_group_mass(data.view(s, layer, POS_STREAM).stats, data.min_count)
              for s in stages}
    vocab = list(data.view(stages[0], layer, POS_STREAM).vocab)
    for s in stages[1:]:
        vocab += [t for t in data.view(s, layer, POS_STREAM).vocab if t not in vocab]
    freq, mass, lead, led = {}, {}, {}, {}
    for s, g in groups.items():
        index = {t: i for i, t in enumerate(data.view(s, layer, POS_STREAM).vocab)}
        sel = np.array([index.get(t, -1) for t in vocab])
        freq[s] = np.where(sel >= 0, g["frequency_share"][sel], 0.0)
        mass[s] = np.where(sel >= 0, g["mass_share"][sel], 0.0)
        top = data.top(s, layer, POS_STREAM)[0][:, 0]  # each neuron's strongest tag
        led[s] = int((top >= 0).sum())
        share = np.bincount(top[top >= 0], minlength=len(index)) / max(1, led[s])
        lead[s] = np.where(sel >= 0, share[sel], 0.0)
    used = np.flatnonzero(np.any([freq[s] + mass[s] + lead[s] > 0 for s in stages], axis=0))
    used = used[np.argsort(-freq[stages[0]][used], kind="stable")]
    tags = [_text(vocab[i]) for i in used]  # (plotly reads <a href> in a label as a link)
    fig = make_subplots(rows=len(stages), cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=[_text(s) for s in stages])
    for row, s in enumerate(stages, start=1):
        f, m = freq[s][used], mass[s][used]
        ratio = np.divide(m, f, out=np.full_like(m, np.nan), where=f > 0)
        custom = np.stack([ratio], axis=1)
        for name, y, color in (("corpus frequency share", f, "#9aa5b4"),
                               ("activation mass share", m, "#3b6fb6"),
                               ("neurons led by the tag", lead[s][used], "#d1453b")):
            fig.add_trace(go.Bar(
                x=tags, y=y, name=name, marker_color=color, showlegend=row == 1,
                legendgroup=name, customdata=custom,
                hovertemplate=("%{x}: " + name + " %{y:.2%}<br>mass / frequency "
                               "%{customdata[0]:.2f}<extra>%{meta[0]}</extra>"),
                meta=[_text(s)]),
                row=row, col=1)
        fig.update_yaxes(title_text="share", tickformat=".0%", row=row, col=1)
        fig.update_xaxes(categoryorder="array", categoryarray=tags, showticklabels=True,
                         row=row, col=1)
    fig.update_layout(barmode="group", bargap=0.2)
    caption = ("Per stage and POS tag (sorted by frequency in "
               f"{stages[0]}): the share of corpus positions with the tag, the share of the "
               "layer's activation mass at those positions, and the share of the layer's neurons "
               "whose POS distribution puts most weight on the tag ("
               + ", ".join(f"{s}: {n:,} neurons" for s, n in led.items()) + "). Mass share above "
               "frequency share: the selected activations are larger at that tag than on "
               "average" + ("; with k = 1 each position adds one event, so the two stay close"
                            if all(data.stage_objs[s].k == 1 for s in stages) else "") + ". A "
               "neuron's strongest tag favours frequent tags (a neuron without preference is led "
               "by the most frequent one): read the neurons' share against the frequency share, "
               "and how it moves between stages.")
    missing = [s for s in data.stages if s not in stages]
    if missing:
        caption += f" Stage(s) {', '.join(missing)} have no pos stream."
    return Plot(_layout(fig, f"{layer}: POS tags, corpus share vs activation-mass share",
                        130 + 240 * len(stages)), layer, caption)
