"""The TX-Ray paper pipeline, offline: ``txray demo``."""

from .config import PRESETS, DemoConfig, preset
from .pipeline import run_demo
from .report_text import format_summary

__all__ = ["PRESETS", "DemoConfig", "format_summary", "preset", "run_demo"]
