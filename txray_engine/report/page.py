"""One self-contained HTML page: CSS, plotly.js embedded once, sections of figures and tables,
the neuron explorer. No external URL is referenced, so the file works offline."""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field

from ..version import __version__
from . import figures as F
from .data import POS_STREAM, ReportData
from .explorer import explorer_html, explorer_intro, explorer_payload
from .tables import changed_table, esc, stages_table, summary_table

CSS = """
:root { --fg:#1f2329; --muted:#69707a; --line:#dde1e6; --accent:#3b6fb6; --bg:#fff; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif; color:var(--fg);
       background:var(--bg); }
header { padding:18px 32px 10px; border-bottom:1px solid var(--line); background:#f6f8fb; }
header h1 { margin:0 0 4px; font-size:22px; }
main { padding:0 32px 40px; max-width:1500px; }
nav { margin:6px 0 0; }
nav a { margin-right:14px; color:var(--accent); text-decoration:none; }
section { margin-top:26px; }
h2 { font-size:19px; border-bottom:2px solid var(--line); padding-bottom:4px; }
h3 { font-size:16px; margin:22px 0 6px; }
h4 { font-size:14px; margin:14px 0 6px; }
h5 { font-size:13px; margin:10px 0 4px; color:var(--muted); }
.muted { color:var(--muted); }
.caption { color:var(--muted); font-size:13px; margin:2px 0 14px; max-width:1100px; }
.note { background:#fff8e6; border-left:4px solid #e0b040; padding:6px 10px; max-width:1100px; }
.notes li { margin:3px 0; }
.fig { border:1px solid var(--line); border-radius:6px; padding:4px; margin:8px 0 2px; }
table.grid { border-collapse:collapse; margin:6px 0 12px; font-size:13px; }
table.grid th, table.grid td { border:1px solid var(--line); padding:3px 8px; vertical-align:top;
                               text-align:left; }
table.grid th { background:#f1f3f6; font-weight:600; }
td.num { text-align:right; white-space:nowrap; font-variant-numeric:tabular-nums; }
.feat { display:inline-block; background:#eef2f8; border-radius:4px; padding:0 5px; margin:1px 2px;
        font-family:ui-monospace,SFMono-Regular,Menlo,monospace; font-size:12px; white-space:pre; }
.feat small { color:var(--muted); font-family:system-ui,sans-serif; }
table.changed td:nth-child(6), table.changed td:nth-child(7) { max-width:520px; }
.explorer .controls { display:flex; gap:10px; align-items:center; flex-wrap:wrap; margin:6px 0; }
.explorer .streams { display:flex; flex-wrap:wrap; gap:4px 28px; align-items:flex-start; }
.explorer input { width:110px; font-size:14px; padding:2px 4px; }
.explorer select, .explorer button { font-size:14px; padding:2px 6px; }
"""


#: The page loads nothing from anywhere: inline scripts and styles, data:/blob: images only.
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
       "img-src data: blob:; font-src data:; connect-src 'none'; base-uri 'none'; "
       "form-action 'none'")


@dataclass
class Page:
    """Sections of HTML collected while the figures are built."""

    title: str
    sections: list[tuple[str, str, str]] = field(default_factory=list)  # (id, title, html)
    figures: int = 0

    def figure(self, plot: "F.Plot | None") -> str:
        if plot is None:
            return ""
        self.figures += 1
        div = plot.to_html(f"fig-{self.figures}")
        return (f'<div class="fig" data-layer="{esc(plot.layer)}">{div}</div>'
                f'<p class="caption">{esc(plot.caption)}</p>')


def _note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def _mass_section(page: Page, data: ReportData) -> str:
    return "".join(f"<h3>{esc(layer)}</h3>" + page.figure(F.mass_figure(data, layer))
                   for layer in data.layers)


def _pair_sections(page: Page, data: ReportData) -> tuple[str, str, str]:
    """Hellinger scatter, length shift and changed tables: per layer and consecutive pair."""
    if not data.pairs:
        msg = _note("Needs two stages; this report has one.")
        return msg, msg, msg
    hel, shift, changed = [], [], []
    for layer in data.layers:
        hel.append(f"<h3>{esc(layer)}</h3>" + summary_table(data, layer))
        shift.append(f"<h3>{esc(layer)}</h3>")
        changed.append(f"<h3>{esc(layer)}</h3>")
        for a, b in data.pairs:
            plot = F.hellinger_figure(data, layer, a, b)
            hel.append(page.figure(plot) if plot else
                       _note(f"{a} → {b}: {data.stream} stream not compared (see notes)."))
            plot = F.length_shift_figure(data, layer, a, b)
            shift.append(page.figure(plot) if plot else
                         _note(f"{a} → {b}: the stages share neither a token nor a pos stream."))
            table = changed_table(data, layer, a, b)
            changed.append(f"<h4>{esc(a)} → {esc(b)} ({esc(data.stream)} stream)</h4>"
                           + (table or _note("not compared (see notes)")))
    return "".join(hel), "".join(shift), "".join(changed)


def _pos_section(page: Page, data: ReportData) -> str:
    if not any(data.has_stream(s, POS_STREAM) for s in data.stages):
        data.notes.append("No pos stream in the chosen stages: the POS section is empty (collect "
                          "with --streams ...,pos to fill it).")
        return _note("None of the stages has a pos stream (collect with `--streams token,pos`).")
    return "".join(f"<h3>{esc(layer)}</h3>" + page.figure(F.pos_figure(data, layer))
                   for layer in data.layers)


def render(data: ReportData, title: str | None = None) -> tuple[str, int]:
    """The whole page as a string, and the number of figures in it."""
    import plotly.offline

    page = Page(title or f"TX-Ray report: {data.store.path.name}")
    data.prepare()  # one layer's cells in memory at a time
    mass = _mass_section(page, data)
    hel, shift, changed = _pair_sections(page, data)
    pos = _pos_section(page, data)
    explorer = explorer_intro(data) + explorer_html(explorer_payload(data))
    pairs = ", ".join(f"{a} → {b}" for a, b in data.pairs) or "none (one stage)"
    lim = data.limits
    overview = (
        f"<p>Store <code>{esc(data.store.path)}</code>; stages in order: "
        f"<b>{esc(', '.join(data.stages))}</b>; compared pairs: {esc(pairs)}; comparison stream: "
        f"<b>{esc(data.stream)}</b> (distributions by {esc(data.by)}, min count "
        f"{data.min_count}).</p>" + stages_table(data)
        + f"<p class=muted>Caps: at most {lim.max_points:,} points per curve or scatter, "
          f"{lim.max_neurons:,} neurons per layer in the explorer, top {lim.explorer_features} "
          f"features per neuron in the explorer, {lim.hover_features} in hover texts, "
          f"{lim.table_features} in tables.</p>")
    if data.notes:
        overview += ("<h4>Notes</h4><ul class=notes>"
                     + "".join(f"<li>{esc(n)}</li>" for n in dict.fromkeys(data.notes)) + "</ul>")
    page.sections = [
        ("overview", "Overview", overview),
        ("mass", "1. Activation mass per neuron", mass),
        ("hellinger", "2. Hellinger distance vs Hellinger length", hel),
        ("length", "3. Length shift", shift),
        ("pos", "4. POS tags: corpus share vs activation-mass share", pos),
        ("changed", "5. Most and least changed neurons", changed),
        ("explorer", "6. Neuron explorer", explorer),
    ]
    nav = " ".join(f'<a href="#{sid}">{esc(re.sub(r"^[0-9]+. ", "", t))}</a>'
                   for sid, t, _ in page.sections)
    body = "".join(f'<section id="{sid}"><h2>{esc(t)}</h2>{h}</section>'
                   for sid, t, h in page.sections)
    when = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    doc = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">"
        f"<meta name=\"generator\" content=\"txray_engine {esc(__version__)}\">"
        f"<title>{esc(page.title)}</title><style>{CSS}</style>"
        f"<script type=\"text/javascript\">{plotly.offline.get_plotlyjs()}</script></head><body>"
        f"<header><h1>{esc(page.title)}</h1><div class=muted>txray_engine {esc(__version__)}, "
        f"generated {when}</div><nav>{nav}</nav></header><main>{body}</main></body></html>\n")
    return doc, page.figures
