"""HTML reports of a store: one self-contained, offline file with plotly figures.

Sections: activation mass per neuron (stages overlaid); Hellinger distance against Hellinger
length, length shift (token and POS streams) and the most / least changed neurons for each
compared pair (consecutive stages, or ``pairs=``); POS corpus share against activation-mass share; a neuron explorer.
Plots are capped (``Limits``) so that 4096-neuron layers and 50k-feature vocabularies stay small.

    from txray_engine.report import build_report
    build_report("runs.zarr", stages=["pretrained", "finetuned"], out="report.html")
"""

from .build import Report, build_report
from .data import Limits, ReportData

__all__ = ["Limits", "Report", "ReportData", "build_report"]
